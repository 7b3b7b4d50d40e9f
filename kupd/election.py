"""Coordinator election: a Lease, `kupd-coordinator`, whose leaseTransitions is the epoch.

A candidate takes it over only when it has watched the holder's renewTime stand still for a whole
lease duration (measured on its own clock, so clock skew between nodes does not matter), and
every takeover increments leaseTransitions: the epoch. Writes use resourceVersion, so two
candidates cannot both win.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kupd import k8s
from kupd import protocol as p
from kupd.rfc3339 import format_micro

log = logging.getLogger(__name__)


class Elector:
    def __init__(self, api: k8s.Client, namespace: str, identity: str, duration: int) -> None:
        self.api = api
        self.namespace = namespace
        self.identity = identity
        self.duration = duration
        self.epoch = -1
        self._observed: tuple[str, str] | None = None
        self._observed_at = 0.0
        self._renewed_at = 0.0
        self._path = k8s.lease_path(namespace, p.COORDINATOR_LEASE)

    @property
    def leading(self) -> bool:
        return self.epoch >= 0 and time.monotonic() - self._renewed_at < self.duration

    def try_acquire_or_renew(self) -> bool:
        """One election round; returns whether this daemon is the coordinator afterwards."""
        now = format_micro()
        # Leadership counts from before the request: the holder must give up no later than a
        # successor (who measures from the renewTime it saw) may take over.
        started = time.monotonic()
        try:
            lease = self.api.get(self._path)
        except k8s.ApiError as e:
            if e.status != 404:
                raise k8s.map_error(e, "read coordinator lease") from e
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": p.COORDINATOR_LEASE, "namespace": self.namespace},
                    "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": self.duration,
                             "acquireTime": now, "renewTime": now, "leaseTransitions": 0}}
            try:
                self.api.create(k8s.lease_path(self.namespace), body)
            except k8s.ApiError as e2:
                if e2.status == 409:
                    return False
                raise k8s.map_error(e2, "create coordinator lease") from e2
            except k8s.TRANSPORT_ERRORS as e2:
                raise k8s.map_error(e2, "create coordinator lease") from e2
            return self._won(0, started)
        except k8s.TRANSPORT_ERRORS as e:
            raise k8s.map_error(e, "read coordinator lease") from e

        spec = lease.setdefault("spec", {})
        holder, renew = str(spec.get("holderIdentity") or ""), str(spec.get("renewTime") or "")
        mono = time.monotonic()
        if (holder, renew) != self._observed:
            self._observed, self._observed_at = (holder, renew), mono
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder == self.identity:
            spec["renewTime"] = now
            if self._replace(lease):
                return self._won(transitions, started)
            return False
        expired = not holder or mono - self._observed_at > int(spec.get("leaseDurationSeconds") or self.duration)
        if not expired:
            self.epoch = -1
            return False
        spec.update(holderIdentity=self.identity, acquireTime=now, renewTime=now,
                    leaseDurationSeconds=self.duration, leaseTransitions=transitions + 1)
        if self._replace(lease):
            log.info("became coordinator at epoch %d (previous holder %r)", transitions + 1, holder)
            return self._won(transitions + 1, started)
        return False

    def _replace(self, lease: dict[str, Any]) -> bool:
        # PUT with the resourceVersion just read: of two candidates, only one can win.
        try:
            self.api.replace(self._path, lease)
            return True
        except k8s.ApiError as e:
            if e.status == 409:
                self.epoch = -1
                return False
            raise k8s.map_error(e, "update coordinator lease") from e
        except k8s.TRANSPORT_ERRORS as e:
            raise k8s.map_error(e, "update coordinator lease") from e

    def _won(self, epoch: int, started: float) -> bool:
        self.epoch = epoch
        self._renewed_at = started
        return True

    def release(self) -> None:
        """Give the lease up on a clean shutdown so the next coordinator need not wait it out."""
        if self.epoch < 0:
            return
        try:
            lease = self.api.get(self._path)
            if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = ""
                self.api.replace(self._path, lease)
        except Exception as e:
            log.debug("releasing the coordinator lease: %s", e)
        self.epoch = -1
