"""Coordinator election: a Lease, `kupd-coordinator`, whose leaseTransitions is the epoch.

A candidate takes it over only when it has watched the holder's renewTime stand still for a whole
lease duration (measured on its own clock, so clock skew between nodes does not matter), and
every takeover increments leaseTransitions: the epoch. Writes use resourceVersion, so two
candidates cannot both win.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from kupd import k8s
from kupd import protocol as p
from kupd.rfc3339 import format_micro, parse_or_none

log = logging.getLogger(__name__)


def _int(value: object, default: int) -> int:
    """An integer field of a Lease another node may have written: anything else is `default`."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53 else default


class Elector:
    def __init__(self, api: k8s.Client, namespace: str, identity: str, duration: int) -> None:
        self.api = api
        self.namespace = namespace
        self.identity = identity
        self.duration = duration
        self.epoch = -1
        self.live_takeovers = 0  # takeovers of this daemon's Lease while it was live (see below)
        self._live_until = 0.0  # monotonic time until which this daemon's last renewal holds
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
        transitions = _int(spec.get("leaseTransitions"), 0)
        if holder == self.identity:
            spec["renewTime"] = now
            if self._replace(lease):
                return self._won(transitions, started)
            return False
        held_for = _int(spec.get("leaseDurationSeconds"), 0) or self.duration
        if holder and time.monotonic() < self._live_until:
            # Admission only checks the times a taker claims (CEL has no clock); the holder
            # itself knows it renewed in time, so a takeover of its live Lease is detected here.
            log.error("the coordinator Lease was taken from this live holder by %r (epoch %d -> %d); "
                      "admission policy kupd.io-leases admits a takeover only after expiry, so the taker "
                      "claimed a time ahead of the cluster's", holder, self.epoch, transitions)
            self.live_takeovers += 1
            self._live_until = 0.0
        expired = not holder or mono - self._observed_at > held_for
        if not expired:
            self.epoch = -1
            return False
        # Observed expiry is measured on this daemon's monotonic clock; the admission policy wants
        # acquireTime at least a lease duration after the last renewTime, on the writers' clocks.
        # A clock behind the old holder's would be refused, so the claim is moved that far ahead.
        acquired = now
        last = parse_or_none(renew) if holder else None
        if last is not None and datetime.now(UTC) < last + timedelta(seconds=held_for, milliseconds=1):
            acquired = format_micro(last + timedelta(seconds=held_for, milliseconds=1))
        spec.update(holderIdentity=self.identity, acquireTime=acquired, renewTime=acquired,
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
        self._live_until = started + self.duration
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
        self._live_until = 0.0
