"""The DirectUpdate's backup store: moto's S3 server in the cluster's own network namespace.

The nodes have no way out of their network (network.py), so the store listens on the bridge's
address there (`ENDPOINT`, what kupd on the control plane uploads to). The test reads the store
through a relay on 127.0.0.1, the same way it reaches the API server. Signature checking is on
(tests/host/backup_servers.moto_user_and_bucket), so kupd's credentials from the Secret are checked
as a real store checks them.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.host.backup_servers import VENV_BIN, S3Server, boto_client, http_ok, moto_user_and_bucket, stop
from tests.realcluster import network

PORT = 9000
BUCKET = "kupd-backups"
PREFIX = "realcluster/"
ENDPOINT = f"http://{network.GATEWAY}:{PORT}"  # as the nodes reach it


class ObjectStore:
    def __init__(self, netns: Path, log_path: Path) -> None:
        self.netns = netns
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.relay: network.ApiRelay | None = None
        self.server: S3Server | None = None

    def start(self, timeout: float = 60) -> ObjectStore:
        if not (VENV_BIN / "moto_server").exists():
            raise RuntimeError("the S3 server is needed: pip install 'moto[server]' (scripts/setup.sh)")
        with open(self.log_path, "wb") as log:
            # nsenter execs moto_server in the cluster's network namespace: one process to stop.
            self.proc = subprocess.Popen(
                ["nsenter", f"--net={self.netns}", str(VENV_BIN / "moto_server"), "-H", network.GATEWAY,
                 "-p", str(PORT)],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "MOTO_CALL_RESET_API": "false"})
        self.relay = network.ApiRelay(self.netns, (network.GATEWAY, PORT)).start()
        local = f"http://127.0.0.1:{self.relay.port}"
        deadline = time.monotonic() + timeout
        while not http_ok(f"{local}/moto-api/"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"moto_server in {self.netns} did not answer within {timeout}s:\n"
                                   f"{self.log_path.read_text(errors='replace')[-2000:]}")
            time.sleep(0.5)
        self.server = moto_user_and_bucket(local, BUCKET)
        return self

    def close(self) -> None:
        if self.relay is not None:
            self.relay.close()
        if self.proc is not None:
            stop(self.proc)

    def secret(self, namespace: str, name: str) -> dict[str, Any]:
        """The credentials Secret kupd reads (docs/usage/backups.md)."""
        assert self.server is not None
        return {"apiVersion": "v1", "kind": "Secret", "metadata": {"namespace": namespace, "name": name},
                "stringData": {"accessKeyId": self.server.access_key_id,
                               "secretAccessKey": self.server.secret_access_key}}

    def client(self) -> Any:
        assert self.server is not None
        return boto_client(self.server.endpoint, self.server.access_key_id, self.server.secret_access_key)

    def objects(self, prefix: str = PREFIX) -> list[dict[str, Any]]:
        listed: list[dict[str, Any]] = self.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
        return listed

    def download(self, key: str, dest: Path) -> dict[str, Any]:
        """The object into dest; returns its metadata (kupd records the sha256 there)."""
        s3 = self.client()
        s3.download_file(BUCKET, key, str(dest))
        meta: dict[str, Any] = s3.head_object(Bucket=BUCKET, Key=key).get("Metadata", {})
        return meta
