"""Real servers for the backup host tests, all on loopback: etcd with TLS client-certificate
authentication, an S3-compatible server (moto in server mode, with signature checking on) and a
GCS emulator (gcp-storage-emulator), plus a TCP proxy that cuts a connection after N bytes.

Import the fixtures into a test module with `from tests.host.backup_servers import ...`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.util
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kupd.backup.credentials import Credentials, from_mapping
from kupd.backup.etcd import EtcdConfig
from kupd.backup.stores import StoreConfig
from kupd.clock import ManualClock

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise RuntimeError(f"{what} exited {proc.returncode}: {out[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- PKI


@dataclass(frozen=True)
class Pki:
    """A CA with an etcd server certificate and a client certificate, plus a client certificate from
    an unrelated CA (the 'wrong certificates' case)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    other_client_cert: Path
    other_client_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)


def _ca(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], name: str, server: bool
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(ca[1], hashes.SHA256()), key


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca("etcd-ca")
    other = _ca("some-other-ca")
    files: dict[str, Path] = {}
    for name, cert in (("ca", ca[0]), ("other-ca", other[0])):
        files[name] = directory / f"{name}.crt"
        files[name].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    for name, issuer, server in (
        ("server", ca, True),
        ("client", ca, False),
        ("other-client", other, False),
    ):
        cert, key = _leaf(issuer, f"kupd-test-{name}", server)
        files[name] = directory / f"{name}.crt"
        files[name].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[name + "-key"] = directory / f"{name}.key"
        _write_key(key, files[name + "-key"])
    return Pki(
        ca=files["ca"],
        server_cert=files["server"],
        server_key=files["server-key"],
        client_cert=files["client"],
        client_key=files["client-key"],
        other_ca=files["other-ca"],
        other_client_cert=files["other-client"],
        other_client_key=files["other-client-key"],
    )


# --------------------------------------------------------------------------- etcd


@dataclass
class Etcd:
    endpoint: str
    data_dir: Path
    pki: Pki
    proc: subprocess.Popen[bytes]

    def etcdctl(self, *args: str, timeout: float = 30.0) -> str:
        argv = [
            "etcdctl",
            f"--endpoints={self.endpoint}",
            f"--cacert={self.pki.ca}",
            f"--cert={self.pki.client_cert}",
            f"--key={self.pki.client_key}",
            *args,
        ]
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
            env={**os.environ, "ETCDCTL_API": "3"},
        )
        return proc.stdout

    def stop(self) -> None:
        stop(self.proc)


def start_etcd(data_dir: Path, pki: Pki, name: str = "kupd-test", peer_port: int | None = None) -> Etcd:
    client_port, peer_port = free_port(), peer_port or free_port()
    endpoint = f"https://127.0.0.1:{client_port}"
    log = open(data_dir.parent / f"{data_dir.name}.log", "wb")  # noqa: SIM115 - lives as long as etcd
    proc = subprocess.Popen(
        [
            "etcd",
            f"--name={name}",
            f"--data-dir={data_dir}",
            f"--listen-client-urls={endpoint}",
            f"--advertise-client-urls={endpoint}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster={name}=http://127.0.0.1:{peer_port}",
            "--client-cert-auth=true",
            f"--trusted-ca-file={pki.ca}",
            f"--cert-file={pki.server_cert}",
            f"--key-file={pki.server_key}",
            "--log-level=warn",
            "--logger=zap",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    etcd = Etcd(endpoint, data_dir, pki, proc)
    wait_for_port(client_port, proc, "etcd")
    deadline = time.monotonic() + 20
    while True:
        try:
            etcd.etcdctl("endpoint", "health", timeout=10)
            return etcd
        except subprocess.CalledProcessError:
            if time.monotonic() > deadline:
                etcd.stop()
                raise
            time.sleep(0.1)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


# What the filled etcd holds: enough keys and bytes that the snapshot is a few MiB.
FILL_KEYS = 300
FILL_VALUE_BYTES = 8 * 1024


def fill_value(i: int) -> str:
    return f"value-{i:05d}-" + ("x" * (FILL_VALUE_BYTES - 12))


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Etcd]:
    if shutil.which("etcd") is None or shutil.which("etcdctl") is None:
        pytest.fail("etcd and etcdctl are needed (Debian packages etcd-server and etcd-client)")
    server = start_etcd(tmp_path_factory.mktemp("etcd") / "data", pki)
    try:
        # One transaction per batch keeps the fill fast (a put per process would take seconds).
        for start in range(0, FILL_KEYS, 50):
            ops = "".join(
                f'put /registry/test/key-{i:05d} "{fill_value(i)}"\n'
                for i in range(start, min(start + 50, FILL_KEYS))
            )
            subprocess.run(
                [
                    "etcdctl",
                    f"--endpoints={server.endpoint}",
                    f"--cacert={pki.ca}",
                    f"--cert={pki.client_cert}",
                    f"--key={pki.client_key}",
                    "txn",
                ],
                input="\n" + ops + "\n\n",
                capture_output=True,
                text=True,
                check=True,
                timeout=30,
                env={**os.environ, "ETCDCTL_API": "3"},
            )
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- S3 (moto server)


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key_id: str
    secret_access_key: str
    bucket: str
    region: str = "us-east-1"


def boto_client(endpoint: str, key_id: str, secret: str, service: str = "s3") -> object:
    import boto3

    return boto3.client(
        service,
        endpoint_url=endpoint,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        region_name="us-east-1",
    )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto in server mode, a real HTTP S3 API on loopback. Signature checking is switched on after
    an IAM user and its key are created, so wrong credentials are refused as by a real store."""
    if not (VENV_BIN / "moto_server").exists():
        pytest.fail("the S3 server is needed: pip install 'moto[server]'")
    port = free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "MOTO_CALL_RESET_API": "false"},
        )
    try:
        wait_for_port(port, proc, "moto_server")
        yield moto_user_and_bucket(f"http://127.0.0.1:{port}", "kupd-backups")
    finally:
        stop(proc)


def moto_user_and_bucket(endpoint: str, bucket: str) -> S3Server:
    """On a fresh moto server: an IAM user with a key, a bucket, then signature checking switched
    on, so that wrong credentials are refused as by a real store."""
    iam: object = boto_client(endpoint, "bootstrap", "bootstrap", "iam")
    iam.create_user(UserName="kupd")  # type: ignore[attr-defined]
    iam.put_user_policy(  # type: ignore[attr-defined]
        UserName="kupd",
        PolicyName="all",
        PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        ),
    )
    key = iam.create_access_key(UserName="kupd")["AccessKey"]  # type: ignore[attr-defined]
    s3: object = boto_client(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    s3.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    _post(f"{endpoint}/moto-api/reset-auth", b"0", "text/plain")
    return S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"], bucket)


# --------------------------------------------------------------------------- GCS emulator


@dataclass(frozen=True)
class GcsServer:
    endpoint: str
    bucket: str


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsServer]:
    if importlib.util.find_spec("gcp_storage_emulator") is None:
        pytest.fail("the GCS emulator is needed: pip install gcp-storage-emulator")
    port = free_port()
    log_path = tmp_path_factory.mktemp("gcs") / "gcs.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gcp_storage_emulator",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--in-memory",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, proc, "gcp-storage-emulator")
        endpoint = f"http://127.0.0.1:{port}"
        _post(
            f"{endpoint}/storage/v1/b?project=test",
            json.dumps({"name": "kupd-backups"}).encode(),
            "application/json",
        )
        yield GcsServer(endpoint, "kupd-backups")
    finally:
        stop(proc)


# --------------------------------------------------------------------------- a proxy that cuts uploads


class CutProxy:
    """Forwards loopback TCP connections to `target_port` and closes each one after the client has
    sent `cut_after` bytes: an upload cut off midway, as a dropped link or a dying proxy would."""

    def __init__(self, target_port: int, cut_after: int) -> None:
        self.target_port = target_port
        self.cut_after = cut_after
        self.cuts = 0
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port: int = self._sock.getsockname()[1]
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if count and sent + len(data) > self.cut_after:
                    dst.sendall(data[: max(0, self.cut_after - sent)])
                    self.cuts += 1
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self._closed.set()
        self._sock.close()


def _post(url: str, body: bytes, content_type: str) -> None:
    """POST to a test server on loopback (the URL is built here, never from input)."""
    req = urllib.request.Request(  # noqa: S310
        url, data=body, method="POST", headers={"Content-Type": content_type}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
        resp.read()


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback test server
            return bool(resp.status < 500)
    except (urllib.error.URLError, OSError):
        return False


# --------------------------------------------------------------------------- kupd settings for them


def etcd_config(server: Etcd, **overrides: object) -> EtcdConfig:
    """kupd's etcd settings for the test etcd, with short timeouts so failures are quick."""
    values: dict[str, object] = {
        "endpoints": (server.endpoint,),
        "ca_file": str(server.pki.ca),
        "cert_file": str(server.pki.client_cert),
        "key_file": str(server.pki.client_key),
        "dial_timeout": 2.0,
        "status_timeout": 3.0,
        "snapshot_timeout": 60.0,
    }
    values.update(overrides)
    return EtcdConfig(**values)  # type: ignore[arg-type]


def fast_store(**values: object) -> StoreConfig:
    """A store config with retries and timeouts short enough for tests."""
    defaults: dict[str, object] = {
        "max_attempts": 2,
        "retry_deadline": 4.0,
        "connect_timeout": 3.0,
        "read_timeout": 10.0,
    }
    defaults.update(values)
    return StoreConfig(**defaults).validated()  # type: ignore[arg-type]


def s3_credentials(server: S3Server, secret: str | None = None) -> Credentials:
    return from_mapping(
        {"accessKeyId": server.access_key_id, "secretAccessKey": secret or server.secret_access_key},
        "test credentials",
    )


def clock_at(year: int = 2026, month: int = 11, day: int = 27, hour: int = 4) -> ManualClock:
    return ManualClock(dt.datetime(year, month, day, hour, 0, 0, tzinfo=dt.UTC))
