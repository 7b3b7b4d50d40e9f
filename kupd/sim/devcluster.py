"""A real local Kubernetes control plane for the demo and the test suite.

It runs a `kupd-testcp` binary built from the pinned upstream release (the repository builds it;
the caller hands its path in, as it does the CRD folder):
an embedded etcd, kube-apiserver with token and client-certificate authentication and Node,RBAC
authorization, and
kube-controller-manager running only the controllers kupd's behaviour depends on (the
disruption controller, so PodDisruptionBudgets gate evictions). Nothing here is simulated:
the simulated part of the demo is the nodes' hosts, not Kubernetes.

The certificates follow kubeadm's layout under <workdir>/pki: ca.crt/ca.key is the cluster CA that
signs the API server's serving certificate (apiserver.crt) and the client certificates it accepts;
etcd/ has etcd's own CA and certificates. All are made with openssl (EC P-256: fast to generate).
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import secrets
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kupd.host import runner

_EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
_DAYS = "30"


def _subject_value(value: str, what: str) -> str:
    """`value` escaped for openssl's -subj; user and group names are refused if openssl could mangle them."""
    if not value or not value.isascii() or not value.isprintable():
        raise ValueError(f"invalid {what} for a certificate subject: {value!r}")
    return re.sub(r"([\\/+=])", r"\\\1", value)


def _make_ca(crt: Path, key: Path, cn: str) -> None:
    runner.run(["openssl", "req", "-x509", *_EC_KEY, "-keyout", str(key), "-out", str(crt),
                "-days", _DAYS, "-subj", f"/CN={cn}"], timeout=60)


def _issue(ca_crt: Path, ca_key: Path, out: Path, name: str, subject: str, ext: str) -> tuple[Path, Path]:
    """A key and a certificate signed by the CA: out/<name>.crt and out/<name>.key."""
    (out / f"{name}.ext").write_text(ext + "\n")
    crt, key, csr = out / f"{name}.crt", out / f"{name}.key", out / f"{name}.csr"
    runner.run(["openssl", "req", *_EC_KEY, "-keyout", str(key), "-out", str(csr), "-subj", subject], timeout=60)
    runner.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
                "-CAcreateserial", "-out", str(crt), "-days", _DAYS, "-extfile", str(out / f"{name}.ext")],
               timeout=60)
    return crt, key


def _write_private(path: Path, text: str) -> None:
    """Written 0600 from the start (it holds a private key) and put in place atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Identity:
    user: str
    token: str
    groups: list[str]


@dataclass
class ControlPlane:
    workdir: Path
    binary: Path
    etcd_port: int = field(default_factory=free_port)
    etcd_peer_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    identities: dict[str, Identity] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    apiserver_args: list[str] = field(default_factory=list)
    """More kube-apiserver flags (a test that needs its watches served from etcd, say)."""

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def etcd_endpoint(self) -> str:
        return f"https://127.0.0.1:{self.etcd_port}"

    @property
    def etcd_pki(self) -> Path:
        """kubeadm's layout: ca.crt, server.*, healthcheck-client.* (what kupd's backup uses)."""
        return self.workdir / "pki" / "etcd"

    def _make_etcd_pki(self) -> None:
        d = self.etcd_pki
        if (d / "healthcheck-client.crt").exists():
            return
        d.mkdir(parents=True, exist_ok=True)
        _make_ca(d / "ca.crt", d / "ca.key", "etcd-ca")
        leaves = {
            "server": ("etcd-server",
                       "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth"),
            "healthcheck-client": ("kube-etcd-healthcheck-client", "extendedKeyUsage=clientAuth"),
            "apiserver-etcd-client": ("kube-apiserver-etcd-client", "extendedKeyUsage=clientAuth"),
        }
        for name, (cn, ext) in leaves.items():
            _issue(d / "ca.crt", d / "ca.key", d, name, f"/CN={cn}", ext)

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    @property
    def ca_file(self) -> Path:
        """The cluster CA (kubeadm's pki/ca.crt): it signs the serving certificate and client certificates."""
        return self.pki / "ca.crt"

    def _make_cluster_pki(self) -> None:
        d = self.pki
        if (d / "apiserver.crt").exists():
            return
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        _make_ca(d / "ca.crt", d / "ca.key", "kubernetes")
        sans = ",".join(["IP:127.0.0.1", "IP:10.96.0.1", "DNS:localhost", "DNS:kubernetes", "DNS:kubernetes.default",
                         "DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local"])
        _issue(d / "ca.crt", d / "ca.key", d, "apiserver", "/CN=kube-apiserver",
               f"subjectAltName={sans}\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth")

    @property
    def admin_kubeconfig(self) -> Path:
        return self.kubeconfig("admin")

    # -- set-up -------------------------------------------------------------------------
    def prepare(self, extra_users: dict[str, list[str]] | None = None) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._make_cluster_pki()
        key = self.workdir / "sa.key"
        if not key.exists():
            runner.run(["openssl", "genrsa", "-out", str(key), "2048"], timeout=60)
            runner.run(["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(self.workdir / "sa.pub")],
                       timeout=60)
        users = {"admin": ["system:masters"], "kube-controller-manager": ["system:masters"]}
        users.update(extra_users or {})
        for user, groups in users.items():
            if user not in self.identities:
                self.identities[user] = Identity(user, secrets.token_hex(16), groups)
        lines = [f'{i.token},{i.user},{i.user},"{",".join(i.groups)}"' for i in self.identities.values()]
        (self.workdir / "tokens.csv").write_text("\n".join(lines) + "\n")
        os.chmod(self.workdir / "tokens.csv", 0o600)

    def kubeconfig(self, user: str) -> Path:
        path = self.workdir / f"{user.replace(':', '_')}.kubeconfig"
        if not path.exists():
            ident = self.identities[user]
            cfg = {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "local", "cluster": {
                    "server": self.server, "certificate-authority": str(self.ca_file)}}],
                "users": [{"name": user, "user": {"token": ident.token}}],
                "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
                "current-context": "local",
            }
            path.write_text(yaml.safe_dump(cfg))
            os.chmod(path, 0o600)
        return path

    def cert_kubeconfig(self, user: str, groups: list[str]) -> Path:
        """A kubeconfig with a fresh client certificate (CN=user, O=each group) signed by the cluster CA,
        everything embedded as kubeadm's admin.conf has it. Each call issues a new certificate."""
        subject = f"/CN={_subject_value(user, 'user')}" + "".join(
            f"/O={_subject_value(g, 'group')}" for g in groups)
        self._make_cluster_pki()
        with tempfile.TemporaryDirectory(dir=self.pki, prefix="client-") as tmp:
            crt, key = _issue(self.ca_file, self.pki / "ca.key", Path(tmp), "client", subject,
                              "keyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth")
            cert_data, key_data = crt.read_bytes(), key.read_bytes()
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "local", "cluster": {
                "server": self.server,
                "certificate-authority-data": base64.b64encode(self.ca_file.read_bytes()).decode()}}],
            "users": [{"name": user, "user": {
                "client-certificate-data": base64.b64encode(cert_data).decode(),
                "client-key-data": base64.b64encode(key_data).decode()}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
            "current-context": "local",
        }
        path = self.workdir / f"{re.sub(r'[^A-Za-z0-9._-]', '_', user)}.cert.kubeconfig"
        _write_private(path, yaml.safe_dump(cfg))
        return path

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        self.procs[name] = subprocess.Popen(
            [str(self.binary), *args], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    # -- parts --------------------------------------------------------------------------
    def start_etcd(self) -> None:
        self._make_etcd_pki()
        pki = self.etcd_pki
        self._spawn("etcd", ["etcd", str(self.workdir / "etcd"), self.etcd_endpoint,
                             f"http://127.0.0.1:{self.etcd_peer_port}",
                             str(pki / "ca.crt"), str(pki / "server.crt"), str(pki / "server.key")])
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "healthcheck-client.crt"), str(pki / "healthcheck-client.key"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            self._check_alive("etcd")
            try:
                with urllib.request.urlopen(f"{self.etcd_endpoint}/health", timeout=2, context=ctx) as r:  # noqa: S310
                    if b"true" in r.read():
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise TimeoutError("etcd did not become healthy in 60s")

    def start_apiserver(self, timeout: float = 120) -> None:
        w = self.workdir
        self._spawn("kube-apiserver", [
            "kube-apiserver",
            f"--etcd-servers={self.etcd_endpoint}",
            f"--etcd-cafile={self.etcd_pki / 'ca.crt'}",
            f"--etcd-certfile={self.etcd_pki / 'apiserver-etcd-client.crt'}",
            f"--etcd-keyfile={self.etcd_pki / 'apiserver-etcd-client.key'}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.api_port}",
            f"--tls-cert-file={self.pki / 'apiserver.crt'}",
            f"--tls-private-key-file={self.pki / 'apiserver.key'}",
            f"--client-ca-file={self.ca_file}",
            f"--token-auth-file={w / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={w / 'sa.pub'}",
            f"--service-account-signing-key-file={w / 'sa.key'}",
            "--api-audiences=https://kubernetes.default.svc.cluster.local",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--enable-admission-plugins=NodeRestriction",
            # No controller creates "default" service accounts in the simulated nodes' namespaces
            # before pods are made, so pods name theirs explicitly or go without.
            "--disable-admission-plugins=ServiceAccount",
            "--allow-privileged=true",
            "--profiling=false",
            "--endpoint-reconciler-type=none",
            "--v=1",
            *self.apiserver_args,
        ])
        self.wait_ready(timeout)

    def start_controller_manager(self) -> None:
        self._spawn("kube-controller-manager", [
            "kube-controller-manager",
            f"--kubeconfig={self.kubeconfig('kube-controller-manager')}",
            "--controllers=disruption",
            "--leader-elect=false",
            "--secure-port=0",
            "--use-service-account-credentials=false",
            "--v=1",
        ])
        time.sleep(0.5)
        self._check_alive("kube-controller-manager")

    def start(self, extra_users: dict[str, list[str]] | None = None) -> None:
        self.prepare(extra_users)
        self.start_etcd()
        self.start_apiserver()
        self.start_controller_manager()

    def _check_alive(self, name: str) -> None:
        p = self.procs.get(name)
        if p is not None and p.poll() is not None:
            tail = (self.workdir / f"{name}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{name} exited with {p.returncode}:\n{tail}")

    def wait_ready(self, timeout: float = 120) -> None:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            self._check_alive("kube-apiserver")
            req = urllib.request.Request(  # noqa: S310 - https only
                f"{self.server}/readyz",
                headers={"Authorization": f"Bearer {self.identities['admin'].token}"},
            )
            try:
                with urllib.request.urlopen(req, timeout=3, context=ctx) as r:  # noqa: S310 - https only
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError, ssl.SSLError) as e:
                last = str(e)
            time.sleep(0.25)
        raise TimeoutError(f"kube-apiserver not ready in {timeout}s: {last}")

    def stop_part(self, name: str, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        p = self.procs.pop(name, None)
        if p is None or p.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, sig)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)

    def stop_apiserver(self) -> None:
        """A hard stop, as a crash or a lost control-plane machine would be; etcd keeps its data."""
        self.stop_part("kube-apiserver", signal.SIGKILL)

    def restart_apiserver(self) -> None:
        self.stop_apiserver()
        self.start_apiserver()

    def stop(self) -> None:
        # The API server's graceful shutdown waits for watches to drain; nothing here needs it.
        self.stop_part("kube-controller-manager", signal.SIGKILL)
        self.stop_part("kube-apiserver", signal.SIGKILL)
        self.stop_part("etcd")

    # -- helpers ------------------------------------------------------------------------
    def kubectl(self, *args: str, user: str = "admin", check: bool = True,
                input_text: str | None = None) -> runner.Result:
        return runner.run(
            [str(self.binary), "kubectl", f"--kubeconfig={self.kubeconfig(user)}", *args],
            timeout=120, check=check, input_text=input_text,
            # kubectl keeps a discovery cache under $HOME; keep it inside the work folder.
            env={"HOME": str(self.workdir)},
        )

    def install_crds(self, crd_dir: Path) -> None:
        """Apply kupd's CRDs and wait until the API server serves them; safe to repeat."""
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd_dir))
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(crd_dir))
        self.kubectl("create", "namespace", "kupd-system", check=False)
        # Established is not yet served: for a moment the API server answers 429 "storage is
        # (re)initializing", which kubectl retries on its own and kupd's client reports.
        from kupd import k8s

        api = k8s.api_client(str(self.admin_kubeconfig))
        deadline = time.monotonic() + 60
        for plural in ("directupdates", "scheduledupdates", "updateschedules"):
            while True:
                try:
                    api.list(k8s.kupd_path(plural), limit=1)
                    break
                except k8s.ApiError as e:
                    if e.status not in (404, 429, 503) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        api.close()

    def token(self, user: str) -> str:
        return self.identities[user].token

    def rss_bytes(self) -> dict[str, int]:
        """Resident memory of each running part, from /proc."""
        out: dict[str, int] = {}
        for name, p in self.procs.items():
            try:
                for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        out[name] = int(line.split()[1]) * 1024
            except FileNotFoundError:
                pass
        return out
