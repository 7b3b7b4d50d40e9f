"""The backup step end to end: a real `kupd daemon` reads the credentials Secret from the real API
server, snapshots the control plane's real etcd (TLS client auth) and uploads to an S3 server on
loopback; the secret never shows in status, Events or the daemon's log."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import boto3

from kupd.sim.simcluster import SimCluster
from tests.cluster.harness import apply_du, wait_phase
from tests.host.backup_servers import S3Server, s3_server  # noqa: F401 - the fixture

SECRET_KEY_MARK = "s3-secret"


def test_backup_to_s3_with_credentials_from_a_secret(sim: SimCluster, s3_server: S3Server) -> None:  # noqa: F811
    cp = sim.cp
    cp.kubectl("create", "secret", "generic", "backup-creds", "-n", "kupd-system",
               f"--from-literal=accessKeyId={s3_server.access_key_id}",
               f"--from-literal=secretAccessKey={s3_server.secret_access_key}")
    try:
        sim.add_node("cp-1", control_plane=True)
        sim.add_node("w-1")
        pki = cp.etcd_pki
        backup: dict[str, Any] = {
            "required": True,
            "store": {"type": "s3", "bucket": s3_server.bucket, "endpoint": s3_server.endpoint,
                      "region": s3_server.region, "prefix": "clusters/",
                      "credentialsSecret": {"namespace": "kupd-system", "name": "backup-creds"}},
            "etcd": {"endpoints": [cp.etcd_endpoint], "caFile": str(pki / "ca.crt"),
                     "certFile": str(pki / "healthcheck-client.crt"), "keyFile": str(pki / "healthcheck-client.key")},
        }
        apply_du(cp, "s3", {"version": "v1.32.0", "backup": backup})
        st = wait_phase(cp, "s3", ("Succeeded", "Failed", "RequiresAttention"))
        assert st["phase"] == "Succeeded", st
        rec = st["backup"]
        assert rec["location"].startswith(f"s3://{s3_server.bucket}/clusters/")
        key = rec["location"].split(f"s3://{s3_server.bucket}/", 1)[1]
        s3 = boto3.client("s3", endpoint_url=s3_server.endpoint, region_name=s3_server.region,
                          aws_access_key_id=s3_server.access_key_id,
                          aws_secret_access_key=s3_server.secret_access_key)
        body = s3.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == rec["sha256"] and len(body) == rec["size"]
        # The secret value is nowhere an operator or another node could read it.
        secret = s3_server.secret_access_key
        events = cp.kubectl("get", "events", "-A", "-o", "json").stdout
        logs = "".join(n.log.read_text(errors="replace") for n in sim.nodes.values())
        for where, text in (("status", json.dumps(st)), ("events", events), ("daemon logs", logs)):
            assert secret not in text, f"the secret access key leaked into {where}"
    finally:
        cp.kubectl("delete", "secret", "backup-creds", "-n", "kupd-system", check=False)
