"""The requests `kupd enroll` sends, against a recording fake of kupd's API client; the objects
themselves and their effect on a real API server are tested in tests/cluster/test_security.py."""

from __future__ import annotations

from typing import Any

import pytest

from kupd import enroll
from kupd.errors import PermanentError
from kupd.k8s import ApiError


class FakeApi:
    def __init__(self, existing: frozenset[str] = frozenset(), status: int = 409) -> None:
        self.existing = existing
        self.status = status
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def create(self, path: str, body: dict[str, Any], **query: Any) -> dict[str, Any]:
        self.calls.append(("create", path, body))
        if body.get("kind") in self.existing:
            raise ApiError(self.status, "AlreadyExists", f"{body['kind']} exists")
        if path.endswith("/token"):
            return {"status": {"token": "t0ken"}}
        return body

    def replace(self, path: str, body: dict[str, Any], **query: Any) -> dict[str, Any]:
        self.calls.append(("replace", path, body))
        return body


def test_apply_creates_each_object_at_its_path() -> None:
    api = FakeApi()
    enroll.apply(api, enroll.manifests("cp-1", True, ("kube-system", "s3")))  # type: ignore[arg-type]
    paths = [(verb, path) for verb, path, _ in api.calls]
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    assert paths == [
        ("create", "/api/v1/namespaces/kupd-system/serviceaccounts"),
        ("create", f"{rbac}/clusterrolebindings"),
        ("create", f"{rbac}/namespaces/kupd-system/rolebindings"),
        ("create", f"{rbac}/namespaces/kupd-system/roles"),
        ("create", f"{rbac}/namespaces/kupd-system/rolebindings"),
        ("create", f"{rbac}/namespaces/kupd-system/roles"),
        ("create", f"{rbac}/namespaces/kupd-system/rolebindings"),
        ("create", f"{rbac}/clusterrolebindings"),
        ("create", f"{rbac}/namespaces/kupd-system/rolebindings"),
        ("create", f"{rbac}/namespaces/default/rolebindings"),
        ("create", f"{rbac}/namespaces/kube-system/roles"),
        ("create", f"{rbac}/namespaces/kube-system/rolebindings"),
    ]


def test_apply_replaces_existing_bindings_but_keeps_the_service_account() -> None:
    api = FakeApi(existing=frozenset({"ServiceAccount", "ClusterRoleBinding", "RoleBinding", "Role"}))
    enroll.apply(api, enroll.manifests("w-1", False))  # type: ignore[arg-type]
    replaced = [path for verb, path, _ in api.calls if verb == "replace"]
    # ":" is quoted in a path segment, as every name is; the API server decodes it.
    assert replaced == [
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/kupd-member%3Aw-1",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/kupd-system/rolebindings/kupd-member%3Aw-1",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/kupd-system/roles/kupd-grant%3Aw-1",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/kupd-system/rolebindings/kupd-grant%3Aw-1",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/kupd-system/roles/kupd-token%3Aw-1",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/kupd-system/rolebindings/kupd-token%3Aw-1",
    ]


def test_apply_maps_other_refusals() -> None:
    api = FakeApi(existing=frozenset({"ServiceAccount"}), status=403)
    with pytest.raises(PermanentError, match="create ServiceAccount kupd-node-w-1: forbidden"):
        enroll.apply(api, enroll.manifests("w-1", False))  # type: ignore[arg-type]


def test_token_request() -> None:
    api = FakeApi()
    assert enroll.request_token(api, "w-1", 3600) == "t0ken"  # type: ignore[arg-type]
    assert api.calls == [("create", "/api/v1/namespaces/kupd-system/serviceaccounts/kupd-node-w-1/token", {
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": [], "expirationSeconds": 3600}})]
