"""packaging/publish-repo.sh turns the built packages into signed repositories, and a node that
cloud-init provisions from such a repository comes up with kupd running and joined:

- the dnf repository: the rpm carries a signature the published key verifies (rpmkeys), and
  repomd.xml's detached signature verifies (gpgv);
- the apt repository, served on loopback: a booted Debian node whose cloud-init NoCloud seed is
  cloud-init/user-data.yaml with its REPLACE-ME parts filled in (the repository's URL and key, an
  enrolment kubeconfig from `kupd enroll NODE --node-kubeconfig -`) installs kupd from it; kupd
  runs, exchanges the enrolment token for its own, and its member Lease appears once its Node is
  registered — with no long-lived token in the user-data.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from kupd import enroll, k8s
from kupd import protocol as p
from kupd.sim.devcluster import ControlPlane
from tests.host import repo_builder
from tests.paths import CRD_DIR
from tests.system import nspawn
from tests.system.conftest import free_port
from tests.system.test_nodes import show, wait_for

ROOT = Path(__file__).resolve().parents[2]
NODE = "kupd-ci-1"
CLOUD_INIT_IMAGE = ("cloud-init", "python3-cffi-backend")  # debootstrap does not resolve cffi's virtual package


def run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=600, **kw)  # type: ignore[call-overload]
    assert isinstance(proc, subprocess.CompletedProcess)
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def repo(deb_package: Path, rpm_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[Path, repo_builder.Key]]:
    work = tmp_path_factory.mktemp("repo")
    key = repo_builder.make_key(work, "rsa3072")  # RSA: what RHEL 9's rpm verifies everywhere
    env = {**os.environ, "GNUPGHOME": str(key.home), "KUPD_SIGNING_KEY": key.fpr}
    out = Path(run([str(ROOT / "packaging" / "publish-repo.sh"), str(work / "pub"),
                    f"bookworm={deb_package}", str(rpm_package)], env=env).stdout.strip().splitlines()[-1])
    yield out, key


def test_dnf_repository_is_signed(repo: tuple[Path, repo_builder.Key], tmp_path: Path) -> None:
    out, _ = repo
    rpms = sorted((out / "rpm" / "x86_64").glob("kupd-*.rpm"))
    assert len(rpms) == 1
    root = tmp_path / "rpmroot"
    root.mkdir()
    run(["rpmkeys", "--root", str(root), "--import", str(out / "rpm" / "RPM-GPG-KEY-kupd")])
    checked = run(["rpmkeys", "--root", str(root), "-K", str(rpms[0])]).stdout
    assert "signatures OK" in checked, checked
    keyring = tmp_path / "key.gpg"
    run(["gpg", "--batch", "--dearmor", "-o", str(keyring), str(out / "rpm" / "RPM-GPG-KEY-kupd")])
    repodata = out / "rpm" / "x86_64" / "repodata"
    run(["gpgv", "--keyring", str(keyring), str(repodata / "repomd.xml.asc"), str(repodata / "repomd.xml")])
    (primary,) = repodata.glob("*primary.xml.gz")
    assert "<name>kupd</name>" in gzip.decompress(primary.read_bytes()).decode()


def test_apt_repository_is_signed(repo: tuple[Path, repo_builder.Key]) -> None:
    out, _ = repo
    dist = out / "deb" / "dists" / "bookworm"
    keyring = out / "deb" / "kupd-archive-keyring.gpg"
    run(["gpgv", "--keyring", str(keyring), str(dist / "InRelease")])
    run(["gpgv", "--keyring", str(keyring), str(dist / "Release.gpg"), str(dist / "Release")])
    packages = (dist / "main" / "binary-amd64" / "Packages").read_text()
    assert "Package: kupd\n" in packages and "Filename: pool/bookworm/kupd_" in packages


def user_data(repo_url: str, key_asc: str, kubeconfig: str, metrics_port: int) -> str:
    """cloud-init/user-data.yaml with its REPLACE-ME parts filled in, nothing else changed."""
    doc = yaml.safe_load((ROOT / "cloud-init" / "user-data.yaml").read_text())
    source = doc["apt"]["sources"]["kupd.list"]
    source["source"] = source["source"].replace("https://REPLACE-ME.example.org/kupd/deb", repo_url)
    assert "REPLACE-ME" not in source["source"]
    source["key"] = key_asc
    for f in doc["write_files"]:
        if f["path"] == "/etc/kupd/kubeconfig":
            f["content"] = kubeconfig
        if f["path"] == "/etc/kupd/config.d/50-cluster.toml":
            # The nodes share the host's network: a port of its own for /metrics.
            f["content"] = f["content"].replace('"127.0.0.1:9464"', f'"127.0.0.1:{metrics_port}"')
    text = "#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False)
    assert "REPLACE-ME" not in text
    return text


def test_cloud_init_node_installs_from_the_repository_and_joins(
        repo: tuple[Path, repo_builder.Key], control_plane: ControlPlane, node_workdir: Path) -> None:
    out, key = repo
    cp = control_plane
    cp.install_crds(CRD_DIR)
    cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "packaging" / "rbac"))
    api = k8s.api_client(str(cp.admin_kubeconfig))
    # The enrolment kubeconfig exactly as an administrator makes it for user-data: 10 minutes.
    enrolled = run([sys.executable, "-m", "kupd", "enroll", NODE, "--kubeconfig", str(cp.admin_kubeconfig),
                    "--node-kubeconfig", "-", "--duration", "600"], cwd=str(ROOT))
    kubeconfig = enrolled.stdout
    token = yaml.safe_load(kubeconfig)["users"][0]["user"]["token"]
    times = enroll.token_times(token)
    assert times and (times[1] - times[0]).total_seconds() == 600
    server = repo_builder.Server(out)
    try:
        seed = user_data(f"{server.url}/deb", key.public_asc.read_text(), kubeconfig, free_port())

        def prepare(node: nspawn.Node) -> None:
            node.write("/var/lib/cloud/seed/nocloud/user-data", seed, mode=0o600)
            node.write("/var/lib/cloud/seed/nocloud/meta-data",
                       f"instance-id: {NODE}-1\nlocal-hostname: {NODE}\n")
            # The image's own cloud-init configuration: a minbase root has no locales and no sshd.
            node.write("/etc/cloud/cloud.cfg.d/90-kupd-test.cfg",
                       "datasource_list: [NoCloud, None]\nlocale: false\nssh_genkeytypes: []\n")

        base = nspawn.base_image(nspawn.SUITE, CLOUD_INIT_IMAGE)
        node = nspawn.make_node(NODE, node_workdir, base)
        prepare(node)
        started = time.monotonic()
        try:
            node.boot(timeout=900)  # `running` once cloud-final (apt update + install) is through
            print(f"cloud-init node up in {time.monotonic() - started:.0f}s")
            status = node.run(["cloud-init", "status", "--long", "--wait"], check=False)
            assert "status: done" in status.stdout, status.stdout + node.run(
                ["tail", "-50", "/var/log/cloud-init-output.log"], check=False).stdout
            policy = node.run(["apt-cache", "policy", "kupd"]).stdout
            assert f"{server.url}/deb bookworm/main" in policy, policy
            assert show(node, "kupd.service", "ActiveState") == "active"
            assert show(node, "kupd.service", "UnitFileState") == "enabled"
            # Joined: once kubeadm join would have registered the Node, the member Lease appears.
            wait_for("kupd waiting for its Node", lambda: "waiting for the Node" in show(
                node, "kupd.service", "StatusText"), timeout=120)
            k8s.call(api.create, "create node", k8s.node_path(),
                      {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
            lease_path = k8s.lease_path(enroll.NAMESPACE, p.member_lease_name(NODE))

            def member_lease() -> bool:
                try:
                    return bool(k8s.call(api.get, "member lease", lease_path)["spec"].get("renewTime"))
                except k8s.NotFound:
                    return False

            wait_for("the node's member Lease", member_lease, timeout=120)
            assert f"member of the cluster as {NODE}" in show(node, "kupd.service", "StatusText")
            # The enrolment token in the user-data was exchanged for the node's own.
            on_node = yaml.safe_load((node.root / "etc/kupd/kubeconfig").read_text())
            assert on_node["users"][0]["user"] == {"tokenFile": "/var/lib/kupd/token"}, on_node
            own = enroll.token_times((node.root / "var/lib/kupd/token").read_text())
            assert own and (own[1] - own[0]).total_seconds() == enroll.NODE_TOKEN_SECONDS
            print(json.dumps({"cloud_init_to_member_seconds": round(time.monotonic() - started)}))
        finally:
            node.stop()
    finally:
        server.close()
        for what in (k8s.node_path(NODE), lease_path_or_none(NODE)):
            with contextlib.suppress(k8s.ApiError):
                api.delete(what)
        cp.kubectl("delete", "clusterrolebindings,rolebindings,roles", "-A", "-l", f"{enroll.NODE_LABEL}={NODE}",
                   check=False)
        cp.kubectl("delete", "serviceaccount", "-n", enroll.NAMESPACE, enroll.service_account(NODE), check=False)


def lease_path_or_none(node: str) -> str:
    return k8s.lease_path(enroll.NAMESPACE, p.member_lease_name(node))
