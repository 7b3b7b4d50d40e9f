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

from kupd import k8s
from kupd.k8s import Watch
from kupd.protocol import LABEL_CONTROL_PLANE
from kupd.sim.simulated import SimulatedHost

log = logging.getLogger(__name__)


class SimKubelet:
    def __init__(self, api: k8s.Client, node: str, host: SimulatedHost, control_plane: bool,
                 labels: dict[str, str] | None = None) -> None:
        self.api = api
        self.node = node
        self.host = host
        self.control_plane = control_plane
        self.labels = dict(labels or {})
        self._stop = threading.Event()
        self._reported = ""
        self._watch: Watch | None = None

    def start(self) -> None:
        threading.Thread(target=self._status_loop, name="simkubelet-status", daemon=True).start()
        threading.Thread(target=self._pod_loop, name="simkubelet-pods", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        w = self._watch
        if w is not None:
            w.close()

    def _register(self) -> None:
        labels = {"kubernetes.io/hostname": self.node, **self.labels}
        if self.control_plane:
            labels[LABEL_CONTROL_PLANE] = ""
        body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.node, "labels": labels}}
        try:
            self.api.create(k8s.node_path(), body)
        except k8s.ApiError as e:
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
        # Strategic merge, as a kubelet posts it: conditions merge by type.
        self.api.patch(k8s.node_path(self.node, subresource="status"), body, kind="strategic")

    def _run_pod(self, name: str, namespace: str) -> None:
        """Report the pod Running and Ready, as a kubelet would once its containers start."""
        body = {"status": {"phase": "Running", "conditions": [
            {"type": "Ready", "status": "True"}, {"type": "ContainersReady", "status": "True"},
            {"type": "PodScheduled", "status": "True"}, {"type": "Initialized", "status": "True"}]}}
        with contextlib.suppress(k8s.ApiError):
            self.api.patch(k8s.path("", "v1", "pods", name, namespace, "status"), body, kind="strategic")

    def _pod_loop(self) -> None:
        while not self._stop.is_set():
            try:
                # No resourceVersion: the watch starts with an ADDED event for every pod already there.
                self._watch = self.api.watch(k8s.path("", "v1", "pods"), timeout_seconds=240,
                                             fieldSelector=f"spec.nodeName={self.node}")
                with self._watch as events:
                    for ev in events:
                        if self._stop.is_set():
                            return
                        if ev["type"] == "ERROR":
                            raise RuntimeError(f"watch error: {ev['object'].get('message')}")
                        if ev["type"] in ("DELETED", "BOOKMARK"):
                            continue
                        self._kubelet(ev["object"])
            except Exception as e:
                log.debug("simkubelet %s pods: %s", self.node, e)
                self._stop.wait(1.0)

    def _kubelet(self, pod: dict[str, Any]) -> None:
        md = pod.get("metadata", {})
        if md.get("deletionTimestamp"):
            with contextlib.suppress(k8s.ApiError):
                self.api.delete(k8s.path("", "v1", "pods", md["name"], md["namespace"]), gracePeriodSeconds=0)
        elif (pod.get("status") or {}).get("phase") != "Running":
            self._run_pod(md["name"], md["namespace"])
