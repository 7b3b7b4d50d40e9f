"""The node's own token: when the daemon exchanges or renews it (pure), and how its kubeconfig
comes to read the token file. Against the real API server: tests/cluster/test_security.py."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kupd import enroll

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def jwt(claims: object) -> str:
    def part(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2lnbmF0dXJl"


def times(seconds: int) -> tuple[datetime, datetime]:
    return T0, T0 + timedelta(seconds=seconds)


def test_token_times_from_the_claims() -> None:
    token = jwt({"iat": int(T0.timestamp()), "exp": int(T0.timestamp()) + 3600, "sub": "x"})
    assert enroll.token_times(token) == times(3600)


@pytest.mark.parametrize("token", [
    "static-token", "a.b", "a.!!!.c", jwt(["not", "a", "dict"]), jwt({"iat": 1}), jwt({"iat": "1", "exp": 2}),
    jwt({"iat": 5, "exp": 5}), jwt({"iat": True, "exp": 9}), jwt({"iat": 1, "exp": 10**30}),
])
def test_tokens_without_usable_times_are_never_rotated(token: str) -> None:
    assert enroll.token_times(token) is None


def test_an_enrolment_token_is_exchanged_at_once() -> None:
    assert enroll.rotation_due(times(3600), T0 + timedelta(seconds=1))
    assert enroll.rotation_due(times(24 * 3600), T0)


def test_the_nodes_own_token_is_renewed_at_half_its_life() -> None:
    own = times(enroll.NODE_TOKEN_SECONDS)
    assert not enroll.rotation_due(own, T0 + timedelta(days=3, hours=11))
    assert enroll.rotation_due(own, T0 + timedelta(days=3, hours=12))


def test_kubeconfig_switches_to_the_token_file(tmp_path: Path) -> None:
    doc = enroll.kubeconfig("https://10.0.0.1:6443", b"CA", "enrolment-token", "w-1")
    assert enroll.current_token(doc, tmp_path) == ("enrolment-token", None)
    switched = enroll.use_token_file(doc, "/var/lib/kupd/token")
    assert switched["users"][0]["user"] == {"tokenFile": "/var/lib/kupd/token"}
    assert enroll.current_token(switched, tmp_path) == (None, "/var/lib/kupd/token")
    assert switched["clusters"] == doc["clusters"] and doc["users"][0]["user"]["token"] == "enrolment-token"
    relative = {**switched, "users": [{"name": "kupd-node-w-1", "user": {"tokenFile": "token"}}]}
    assert enroll.current_token(relative, tmp_path) == (None, str(tmp_path / "token"))


@pytest.mark.parametrize("doc", [None, [], {"users": "x"}, {"current-context": "c", "contexts": [{"name": "c"}]}])
def test_current_token_of_anything_else_is_none(doc: object, tmp_path: Path) -> None:
    assert enroll.current_token(doc, tmp_path) == (None, None)


def test_the_node_may_request_tokens_for_its_own_service_account_only() -> None:
    role = enroll.token_role("w-1")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["serviceaccounts/token"],
                              "resourceNames": ["kupd-node-w-1"], "verbs": ["create"]}]
    kinds = [(o["kind"], o["metadata"]["name"]) for o in enroll.manifests("w-1", False)]
    assert ("Role", "kupd-token:w-1") in kinds and ("RoleBinding", "kupd-token:w-1") in kinds
