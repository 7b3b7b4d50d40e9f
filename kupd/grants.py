"""The coordinator's Lease writes: each node's grant Lease (its turn, delivered at once: one small
write that node alone watches) and the activity Lease (which operation runs, watched by every
member to renew often only while one does).

A grant Lease is cleared only once the status that records the end of its turn is stored, so a
successor finds every turn either in the status or in a grant Lease (the planner adopts the
latter). The Lease bodies are protocol.py's pure codecs; every write is gated on still leading.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

from kupd import k8s, planner
from kupd import protocol as p
from kupd.api.models import DirectUpdateSpec
from kupd.election import Elector
from kupd.errors import KupdError
from kupd.untrusted import Invalid

log = logging.getLogger(__name__)

# Grant Leases written at once when a round gives several turns (a wave ends together): one after
# the other, the last of 50 waited 50 API calls (7 s at 0.15 s each on a loaded API server).
DELIVERY_WRITERS = 16
# Seconds an operation's announcement gives idle members to renew before the planner judges them:
# they renew within member.ACTIVATION_SPREAD of hearing it, through two watch deliveries.
ACTIVATION_GRACE = 5.0


def in_flight(status: Mapping[str, Any]) -> set[str]:
    """The nodes whose turn `status` records as granted and not over."""
    return {e["name"] for e in status.get("nodes") or [] if e.get("phase") in planner.IN_FLIGHT and e.get("grant")}


def _patch(api: k8s.Client, namespace: str, name: str, body: dict[str, Any], what: str) -> dict[str, Any]:
    return k8s.patch_or_create(api, k8s.lease_path(namespace, name), k8s.lease_path(namespace), body, what)


class GrantLeases:
    """Delivers and clears the grant Leases; `leases` is the coordinator's Lease informer, kept
    current with these writes."""

    def __init__(self, api: k8s.Client, namespace: str, leases: k8s.Informer, elector: Elector) -> None:
        self.api = api
        self.namespace = namespace
        self.leases = leases
        self.elector = elector
        self.writes = 0
        self._count = threading.Lock()
        self._memo: dict[str, p.Grant | None] = {}
        # Clears are off the round's thread; several deliveries of one round go out together.
        self.clears = ClearWriter(lambda node: self.write(node, "", {}))
        self._writers = ThreadPoolExecutor(DELIVERY_WRITERS, thread_name_prefix="coordinator-grant")
        # Status records that cannot be a grant, logged once: (uid, node, why).
        self._invalid: set[tuple[str, str, str]] = set()
        # What every grant Lease carries (node -> value), kept from the informer's journal: a
        # round costs what changed, not a pass over the N member Leases beside them.
        self._values: dict[str, str] = {}
        self._seq = -1

    def start(self) -> None:
        self.clears.start()

    def stop(self) -> None:
        self.clears.stop()
        self._writers.shutdown(wait=False)

    def values(self) -> dict[str, str]:
        """node -> the grant annotation of its grant Lease (a copy: a round keeps it current with
        its own writes)."""
        seq, keys = self.leases.changes(self._seq)
        self._seq = -1  # until applied: a round that fails half-way reads everything again
        if keys is None:
            self._values = p.grant_values(self.leases.items())
        for key in keys or ():
            name = key.rpartition("/")[2]
            if name.startswith(p.GRANT_LEASE_PREFIX):
                lease = self.leases.get(key)
                node = name[len(p.GRANT_LEASE_PREFIX):]
                if lease is None:
                    self._values.pop(node, None)
                else:
                    self._values[node] = p.grant_value(lease)
        self._seq = seq
        return dict(self._values)

    def decode(self, value: str) -> p.Grant | None:
        if value not in self._memo:
            if len(self._memo) > 10000:
                self._memo.clear()
            self._memo[value] = p.Grant.decode(value)
        return self._memo[value]

    def delivered(self, grants: dict[str, str]) -> dict[str, p.Grant]:
        """node -> the valid grant its Lease carries."""
        out = {}
        for node, value in grants.items():
            g = self.decode(value) if value else None
            if g is not None:
                out[node] = g
        return out

    def deliver(self, obj: dict[str, Any], spec: DirectUpdateSpec, status: dict[str, Any],
                grants: dict[str, str]) -> None:
        """Write every in-flight grant of `status` that its node's grant Lease does not carry yet.
        A record that cannot be a grant is not delivered (the planner says so: planner.invalid_grant);
        the other nodes' turns are."""
        md = obj["metadata"]
        todo: list[tuple[str, str]] = []
        for e in status.get("nodes") or []:
            if e.get("phase") not in planner.IN_FLIGHT or not e.get("grant"):
                continue
            try:
                grant = p.Grant.from_record(md["name"], md["uid"], e, spec)
            except Invalid as err:
                self._not_delivered(md, str(e.get("name", "")), err)
                continue
            if self.clears.settle(e["name"]):
                grants[e["name"]] = ""  # a clear landed meanwhile: the Lease carries nothing now
            have = grants.get(e["name"])
            if not have or self.decode(have) != grant:
                todo.append((e["name"], grant.encode()))
        if len(todo) == 1:
            self.write(*todo[0], grants)
        elif todo:
            # Each node's Lease is its own object: the writes are independent. All are waited for,
            # then the first failure (if any) is the round's, as it was one after the other.
            done, _ = wait([self._writers.submit(self.write, node, value, grants) for node, value in todo])
            errors = [x for f in done if (x := f.exception()) is not None]
            if errors:
                raise errors[0]

    def _not_delivered(self, md: dict[str, Any], node: str, err: Invalid) -> None:
        key = (md["uid"], node, str(err))
        if key not in self._invalid:
            if len(self._invalid) > 10000:
                self._invalid.clear()
            self._invalid.add(key)
            log.warning("DirectUpdate %s: not delivering the turn of %s: invalid grant record, field %s",
                        md["name"], node, err)

    def clear(self, active_uid: str | None, ops: list[dict[str, Any]], planned: Mapping[str, dict[str, Any]],
              members: dict[str, planner.MemberView], grants: dict[str, str]) -> None:
        """Clear the grant Leases of turns that are over.

        A turn of the operation being run is over once the stored status records it so (until
        then a successor needs the Lease to adopt it; `planned` holds the statuses not stored
        yet). A turn of any other operation (finished, failed or deleted while the node still
        worked) is over when its node reports so.
        """
        by_uid = {o["metadata"]["uid"]: o for o in ops}
        # The active operation's turns, stored or planned: found once, not once per grant Lease.
        held: set[str] | None = None
        for node, value in list(grants.items()):
            if not value:
                continue
            g = self.decode(value)
            if g is not None and g.uid == active_uid and g.uid in by_uid:
                if held is None:
                    held = in_flight(by_uid[g.uid].get("status") or {}) | in_flight(planned.get(g.uid) or {})
                keep = node in held
            else:
                keep = g is not None and not planner.turn_over(members.get(node), g)
            if not keep:
                self.clears.clear(node)

    def write(self, node: str, value: str, grants: dict[str, str]) -> None:
        if not self.elector.leading:
            return
        body = p.grant_lease_body(self.namespace, node, value, self.elector.epoch)
        what = f"{'clear' if not value else 'deliver'} grant of {node}"
        new = _patch(self.api, self.namespace, p.grant_lease_name(node), body, what)
        with self._count:
            self.writes += 1
        self.leases.put(new)
        grants[node] = value
        if value:
            log.info("delivered grant to %s", node)


class ClearWriter:
    """Clears grant Leases on its own thread. A clear ends a turn that is over and recorded: no
    node waits for it. On the round's thread it cost one API call per ended turn, in a batch after
    each status write (a dozen turns at 1000 nodes, each a PATCH of 0.1 to 0.3 s on a loaded API
    server), and every grant of the next rounds waited behind them. `write(node)` clears one
    (raising KupdError on failure: the next round asks again). A delivery to a node first
    `settle`s it: a clear not begun is dropped, one under way is waited for, so a clear never
    lands after the node's next grant."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self._write = write
        self._pending: dict[str, None] = {}  # in order of asking
        self._busy: str | None = None
        self._cond = threading.Condition()
        self._stop = False

    def start(self) -> None:
        threading.Thread(target=self._loop, name="coordinator-clears", daemon=True).start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()

    def clear(self, node: str) -> None:
        with self._cond:
            if node != self._busy and node not in self._pending:
                self._pending[node] = None
                self._cond.notify_all()

    def backlog(self) -> int:
        """Clears asked for and not yet done."""
        with self._cond:
            return len(self._pending) + (self._busy is not None)

    def settle(self, node: str) -> bool:
        """Before a grant is delivered to `node`: no clear of it is left to land after that.
        True when a clear of it was under way (the Lease may be empty now)."""
        with self._cond:
            self._pending.pop(node, None)
            waited = False
            while self._busy == node and not self._stop:
                waited = True
                self._cond.wait(1.0)
            return waited

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stop:
                    self._cond.wait(1.0)
                if self._stop:
                    return
                node = next(iter(self._pending))
                del self._pending[node]
                self._busy = node
            try:
                self._write(node)
            except KupdError as e:
                log.warning("clearing the grant of %s: %s", node, e)
            except Exception:
                log.exception("clearing the grant of %s", node)
            finally:
                with self._cond:
                    self._busy = None
                    self._cond.notify_all()


class ActivityLease:
    """Names the operation being run ("" when none) in the activity Lease."""

    def __init__(self, api: k8s.Client, namespace: str, leases: k8s.Informer, elector: Elector,
                 member_duration: int) -> None:
        self.api = api
        self.namespace = namespace
        self.leases = leases
        self.elector = elector
        self.member_duration = member_duration
        # When the activity Lease last named an operation (monotonic), None while idle.
        self._activated_at: float | None = None

    def _current(self) -> dict[str, Any] | None:
        return self.leases.get(f"{self.namespace}/{p.ACTIVITY_LEASE}")

    def activating(self, first: dict[str, Any], waiting: bool) -> bool:
        """Whether `first` has just been announced to idle members (announcing it now if it was
        not, unless it is `waiting` for an operator or a window) and they are still within the
        grace to renew. While it holds, the operation is not planned."""
        value = f"{first['metadata']['name']}/{first['metadata']['uid']}"
        current = self._current()
        if (current is None or p.activity_value(current) != value) and not waiting:
            self.announce(first)
        if self._activated_at is None:
            return False
        grace = min(ACTIVATION_GRACE, self.member_duration / 2)
        return time.monotonic() - self._activated_at < grace

    def announce(self, running: dict[str, Any] | None) -> None:
        """Keep the activity Lease naming the operation being run ("" when none): written only
        when that changes, so its watchers (every member) hear of operations starting and ending
        and of nothing else."""
        value = f"{running['metadata']['name']}/{running['metadata']['uid']}" if running else ""
        current = self._current()
        if current is not None and p.activity_value(current) == value:
            return
        if current is None and not value:
            return  # never written: members start idle
        if not self.elector.leading:
            return
        body = p.activity_lease_body(self.namespace, value, self.elector.epoch)
        new = _patch(self.api, self.namespace, p.ACTIVITY_LEASE, body, "announce activity")
        self.leases.put(new)
        self._activated_at = time.monotonic() if value else None
        log.info("activity: %s", value or "idle")
