"""kupd upgrades a real kubeadm cluster: three systemd-nspawn nodes (one control plane, two
workers) with containerd, the kubelet and pods, created by `kubeadm init` and `kubeadm join`
from packages in signed per-minor repositories, and upgraded by a DirectUpdate, with kupd's
daemon killed by SIGKILL while `kubeadm upgrade apply` runs.

What is real and what is not is listed in docs/development/testing.md ("Real-cluster tier").
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from typing import Any

from kupd.host import parsers
from kupd.versions import Version
from tests.cluster.harness import Monitor, apply_du, wait_phase
from tests.realcluster import artifacts, cluster, store
from tests.realcluster.harness import BACKUP_SECRET, NAMES, AvailabilityWatch, RealCluster, StatusHistory, wait_for

FROM, TO = artifacts.FROM, artifacts.TO
WORKLOADS = f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: default}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: web
        image: {artifacts.WORKLOAD_IMAGE}
        command: [sh, -c, "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"]
        readinessProbe:
          httpGet: {{path: /index.html, port: 8080}}
          periodSeconds: 2
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {{name: web, namespace: default}}
spec:
  maxUnavailable: 1
  selector: {{matchLabels: {{app: web}}}}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: agent, namespace: default}}
spec:
  selector: {{matchLabels: {{app: agent}}}}
  template:
    metadata: {{labels: {{app: agent}}}}
    spec:
      terminationGracePeriodSeconds: 1
      tolerations: [{{operator: Exists}}]
      containers:
      - {{name: agent, image: {artifacts.WORKLOAD_IMAGE}, command: [sleep, "100000"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: bare, namespace: default, labels: {{app: bare}}}}
spec:
  nodeName: rc-w-1
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: bare, image: {artifacts.WORKLOAD_IMAGE}, command: [sleep, "100000"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: scratch, namespace: default, labels: {{app: scratch}}}}
spec:
  nodeName: rc-w-2
  terminationGracePeriodSeconds: 1
  volumes: [{{name: data, emptyDir: {{}}}}]
  containers:
  - name: scratch
    image: {artifacts.WORKLOAD_IMAGE}
    command: [sh, -c, "date > /data/written && exec sleep 100000"]
    volumeMounts: [{{name: data, mountPath: /data}}]
"""


def pods(rc: RealCluster, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = rc.get_json("pods", "-n", "default", "-l", selector)["items"]
    return items


def running(p: dict[str, Any]) -> bool:
    return bool(p["status"].get("phase") == "Running" and all(
        c.get("ready") for c in p["status"].get("containerStatuses") or [{}]))


def static_pod_images(rc: RealCluster) -> dict[str, str]:
    out = {}
    for p in rc.get_json("pods", "-n", "kube-system")["items"]:
        if p["metadata"].get("annotations", {}).get("kubernetes.io/config.mirror"):
            out[p["metadata"]["labels"].get("component", p["metadata"]["name"])] = p["spec"]["containers"][0]["image"]
    return out


def test_the_cluster_is_real(realcluster: RealCluster) -> None:
    rc = realcluster
    nodes = rc.get_json("nodes")["items"]
    assert sorted(n["metadata"]["name"] for n in nodes) == ["rc-cp-1", "rc-w-1", "rc-w-2"]
    for n in nodes:
        info = n["status"]["nodeInfo"]
        assert info["kubeletVersion"] == FROM.stamp, info
        assert info["containerRuntimeVersion"] == f"containerd://{FROM.containerd.lstrip('v')}", info
    version = json.loads(rc.kubectl("get", "--raw", "/version").stdout)
    assert version["gitVersion"] == FROM.stamp
    images = static_pod_images(rc)
    for component in ("kube-apiserver", "kube-controller-manager", "kube-scheduler"):
        assert images[component] == f"{artifacts.REGISTRY}/{component}:{FROM.stamp}", images


def test_kubeadm_upgrade_plan_is_read_by_kupd(realcluster: RealCluster) -> None:
    """kupd parses what the real `kubeadm upgrade plan` prints (the host tier parses a capture)."""
    out = realcluster.cp.run(["kubeadm", "upgrade", "plan", TO.stamp], timeout=300).stdout
    plan = parsers.upgrade_plan(out)
    assert plan.cluster_version == Version.parse(FROM.stamp), out
    targets = {c.component: c.target for c in plan.components}
    assert targets.get("kube-apiserver") == TO.stamp, (targets, out)


def events_of(rc: RealCluster, kind: str, name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = rc.get_json("events", "-A", "--field-selector",
                                               f"involvedObject.kind={kind},involvedObject.name={name}")["items"]
    return items


def test_directupdate_upgrades_the_cluster(realcluster: RealCluster) -> None:
    rc = realcluster
    rc.kubectl("apply", "-f", "-", input_text=WORKLOADS)
    wait_for("workloads running", lambda: sum(running(p) for p in pods(rc, "app=web")) == 3
             and all(running(p) for p in pods(rc, "app in (agent,bare,scratch)")), timeout=300)
    watch = AvailabilityWatch(rc, "default", "web").start()
    history = StatusHistory(rc, "real-upgrade").start()
    # A real step is long: `kubeadm upgrade apply` restarts each static pod and waits for it (2-3
    # minutes here), a drain waits for the PDB. The stall check (no progress, nothing said) is
    # for what no step explains; 30 s, the simulated cluster's figure, would fire in every run.
    monitor = Monitor(rc, stall_seconds=600).start()  # type: ignore[arg-type]  # RealCluster offers what Monitor reads
    killed: dict[str, str] = {}

    def tick(st: dict[str, Any]) -> None:
        # SIGKILL kupd's main process on the control plane while `kubeadm upgrade apply` runs.
        if "kill" in killed:
            return
        r = rc.cp.run(["pgrep", "-f", "kubeadm upgrade apply"], check=False)
        if r.returncode == 0:
            killed["kill"] = r.stdout.strip()
            rc.cp.node.run(["systemctl", "kill", "--kill-who=main", "-s", "KILL", "kupd"])

    apply_du(rc, "real-upgrade", {  # type: ignore[arg-type]
        "version": TO.stamp,
        "containerdVersion": TO.containerd.lstrip("v"),
        "concurrency": 1,
        "packageSource": cluster.PACKAGE_SOURCE,
        # An S3 store on the cluster's network, credentials from the Secret (harness.BACKUP_SECRET).
        "backup": {"policy": "Required", "store": {
            "type": "s3", "bucket": store.BUCKET, "prefix": store.PREFIX, "endpoint": store.ENDPOINT,
            "region": "us-east-1", "credentialsSecret": dict(zip(("namespace", "name"), BACKUP_SECRET, strict=True))}},
        # force: the bare Pod is deleted, as kubectl drain --force does.
        "drain": {"timeoutSeconds": 300, "deleteEmptyDirData": True, "force": True},
    })
    try:
        st = wait_phase(rc, "real-upgrade", ("Succeeded", "Failed", "RequiresAttention"),  # type: ignore[arg-type]
                        timeout=2400, tick=tick)
    finally:
        watch.stop()
        history.stop()
        monitor.stop()
    assert st["phase"] == "Succeeded", json.dumps(st, indent=1)[:6000]
    assert killed, "kubeadm upgrade apply was never seen running: the SIGKILL did not happen"
    monitor.assert_invariants(concurrency=1)

    # Every kubelet, the static pods and the API server are at the target.
    for n in rc.get_json("nodes")["items"]:
        assert n["status"]["nodeInfo"]["kubeletVersion"] == TO.stamp, n["status"]["nodeInfo"]
        assert n["status"]["nodeInfo"]["containerRuntimeVersion"] == f"containerd://{TO.containerd.lstrip('v')}"
        assert not n["spec"].get("unschedulable"), f"{n['metadata']['name']} left cordoned"
    images = static_pod_images(rc)
    for component in ("kube-apiserver", "kube-controller-manager", "kube-scheduler"):
        assert images[component] == f"{artifacts.REGISTRY}/{component}:{TO.stamp}", images
    assert json.loads(rc.kubectl("get", "--raw", "/version").stdout)["gitVersion"] == TO.stamp

    # Nothing left for kubeadm to do: no component behind, and kubeadm says so itself.
    r = rc.cp.run(["kubeadm", "upgrade", "plan", "--v=1"], timeout=300)
    plan = parsers.upgrade_plan(r.stdout)
    assert plan.cluster_version == Version.parse(TO.stamp), r.stdout
    assert [c for c in plan.components if c.current != c.target] == [], r.stdout
    assert "you're up-to-date" in r.stdout + r.stderr, (r.stdout, r.stderr[-3000:])

    # The Deployment never went below what its PDB allows (3 replicas, maxUnavailable 1), watched
    # (every version the API server held) and polled throughout.
    assert watch.watched > 3 and watch.samples > 10, (watch.watched, watch.samples)
    assert watch.min_available is not None and watch.min_available >= 2, watch.min_available

    # The story in status: Running, then Succeeded; each node Granted, Upgrading, Succeeded,
    # the control plane first, one node at a time; the steps a node goes through.
    story = history.describe()
    assert history.phases()[-1] == "Succeeded" and "Running" in history.phases(), story
    for name in NAMES:
        phases = history.node_phases(name)
        assert phases[-1] == "Succeeded" and "Upgrading" in phases and "Failed" not in phases, (name, story)
    # (The coordinator may record the control plane's end and a worker's grant in one write.)
    cp_done = history.first("rc-cp-1", "Succeeded")
    for worker in ("rc-w-1", "rc-w-2"):
        turns = [i for i in (history.first(worker, "Granted"), history.first(worker, "Upgrading")) if i is not None]
        assert cp_done is not None and turns and min(turns) >= cp_done, story
    assert "kubeadm-upgrade" in history.node_steps("rc-cp-1"), story
    for worker in ("rc-w-1", "rc-w-2"):
        assert "drain" in history.node_steps(worker), (worker, story)
    conditions = {c["type"]: c for c in st["conditions"]}
    assert conditions["BackupSucceeded"]["status"] == "True", conditions
    assert conditions["BackupUploaded"]["reason"] == "Uploaded", conditions
    assert conditions["Preflight"]["status"] == "True", conditions
    assert conditions["Progressing"]["status"] == "False" or conditions["Progressing"]["reason"] == "Completed", \
        conditions
    for entry in st["nodes"]:
        assert entry["phase"] == "Succeeded" and entry.get("toVersion", TO.stamp) == TO.stamp, entry
    # ...and in Events: on the DirectUpdate, and on each Node.
    du_events = events_of(rc, "DirectUpdate", "real-upgrade")
    reasons = [e["reason"] for e in du_events]
    for reason in ("BackupTaken", "NodeGranted", "NodeUpgraded", "Succeeded"):
        assert reason in reasons, (reason, reasons)
    assert reasons.count("NodeUpgraded") == 3, reasons
    assert not {"NodeFailed", "BackupFailed", "BackupNotUploaded"} & set(reasons), reasons
    # (Events are best effort: one sent while `kubeadm upgrade apply` restarts the API server is
    # lost, so the control plane's StepStarted Events are not counted on.)
    for name in NAMES:
        node_reasons = {e["reason"] for e in events_of(rc, "Node", name)}
        expected = {"NodeGranted", "NodeUpgraded"} | ({"StepStarted"} if name != "rc-cp-1" else set())
        assert expected <= node_reasons, (name, node_reasons)

    # The etcd snapshot kupd took before the upgrade is in the S3 store, with the checksum status
    # names, and restores with etcdutl.
    backup = st["backup"]
    assert backup["uploaded"] and backup["verified"] and backup["node"] == "rc-cp-1", backup
    objects = [o for o in rc.store.objects() if o["Key"].endswith(".db")]
    assert len(objects) == 1, objects
    key = objects[0]["Key"]
    assert backup["location"] == f"s3://{store.BUCKET}/{key}", (backup, key)
    snapshot = rc.work / "snapshot.db"
    meta = rc.store.download(key, snapshot)
    digest = hashlib.sha256(snapshot.read_bytes()).hexdigest()
    assert digest == backup["sha256"] == meta.get("sha256"), (digest, backup, meta)
    restored = rc.work / "restored-etcd"
    r = subprocess.run([str(rc.arts.etcdutl), "snapshot", "restore", str(snapshot), f"--data-dir={restored}"],
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0 and (restored / "member" / "snap" / "db").exists(), r.stderr
    status = json.loads(subprocess.run([str(rc.arts.etcdutl), "snapshot", "status", str(snapshot), "-w", "json"],
                                       capture_output=True, text=True, timeout=120, check=True).stdout)
    assert status["revision"] == backup["revision"] and status["totalKey"] > 0, (status, backup)

    # The daemon that came after the SIGKILL found kubeadm still at work and waited for it.
    journal = rc.journal("rc-cp-1", 3000)
    assert re.search(r"kubeadm \(pid \d+\) from before this daemon started is still running", journal), \
        journal[-3000:]
