"""The kubelet's part of a simulated node: register the Node, report Ready at the running
kubelet version, and finish the deletion of pods evicted from the node.

On a real node the kubelet does all three; the simulated host has no kubelet, so without this
a drained pod would stay Terminating forever and no Node would ever report a new version.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

from kubernetes import client, watch

from kupd.host.simulated import SimulatedHost
from kupd.protocol import LABEL_CONTROL_PLANE

log = logging.getLogger(__name__)


class SimKubelet:
    def __init__(self, api: client.ApiClient, node: str, host: SimulatedHost, control_plane: bool,
                 labels: dict[str, str] | None = None) -> None:
        self.core = client.CoreV1Api(api)
        self.node = node
        self.host = host
        self.control_plane = control_plane
        self.labels = dict(labels or {})
        self._stop = threading.Event()
        self._reported = ""

    def start(self) -> None:
        threading.Thread(target=self._status_loop, name="simkubelet-status", daemon=True).start()
        threading.Thread(target=self._pod_loop, name="simkubelet-pods", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _register(self) -> None:
        labels = {"kubernetes.io/hostname": self.node, **self.labels}
        if self.control_plane:
            labels[LABEL_CONTROL_PLANE] = ""
        body = client.V1Node(metadata=client.V1ObjectMeta(name=self.node, labels=labels))
        try:
            self.core.create_node(body)
        except client.ApiException as e:
            if e.status != 409:
                raise

    def _status_loop(self) -> None:
        registered = False
        while not self._stop.is_set():
            try:
                if not registered:
                    self._register()
                    registered = True
                running = self.host.state()["running_kubelet"]
                if running != self._reported:
                    self._set_status(running)
                    self._reported = running
            except Exception as e:  # the API may be down; try again shortly
                log.debug("simkubelet %s: %s", self.node, e)
            self._stop.wait(0.5)

    def _set_status(self, version: str) -> None:
        body: dict[str, Any] = {"status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "simulated kubelet is posting ready status"}],
            "nodeInfo": {"kubeletVersion": version, "kubeProxyVersion": "", "machineID": "", "systemUUID": "",
                         "bootID": self.host.state()["boot_id"], "kernelVersion": "", "osImage": "simulated",
                         "containerRuntimeVersion": "containerd://" + self.host.state()["versions"]["containerd"],
                         "operatingSystem": "linux", "architecture": "amd64"},
        }}
        self.core.patch_node_status(self.node, body)

    def _run_pod(self, name: str, namespace: str) -> None:
        """Report the pod Running and Ready, as a kubelet would once its containers start."""
        body = {"status": {"phase": "Running", "conditions": [
            {"type": "Ready", "status": "True"}, {"type": "ContainersReady", "status": "True"},
            {"type": "PodScheduled", "status": "True"}, {"type": "Initialized", "status": "True"}]}}
        with contextlib.suppress(client.ApiException):
            self.core.patch_namespaced_pod_status(name, namespace, body)

    def _pod_loop(self) -> None:
        while not self._stop.is_set():
            try:
                w = watch.Watch()
                for ev in w.stream(self.core.list_pod_for_all_namespaces, field_selector=f"spec.nodeName={self.node}",
                                   timeout_seconds=240, deserialize=False):
                    if self._stop.is_set():
                        return
                    obj = ev["object"]
                    md = obj.get("metadata", {})
                    if ev["type"] == "DELETED":
                        continue
                    if md.get("deletionTimestamp"):
                        with contextlib.suppress(client.ApiException):
                            self.core.delete_namespaced_pod(md["name"], md["namespace"], grace_period_seconds=0)
                    elif (obj.get("status") or {}).get("phase") != "Running":
                        self._run_pod(md["name"], md["namespace"])
            except Exception as e:
                log.debug("simkubelet %s pods: %s", self.node, e)
                self._stop.wait(1.0)
