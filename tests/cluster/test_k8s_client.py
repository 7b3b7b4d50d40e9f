"""kupd.k8s client against the real kube-apiserver: authentication, the verbs and their errors, watches
(events, end, close from another thread, expired resourceVersion) and sharing one client between
threads.

Client certificates are issued by the control plane's cluster CA (as kubeadm's admin.conf and
kubelet.conf carry them); the API server accepts them alongside tokens.
"""

from __future__ import annotations

import base64
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import urllib3
import yaml

from kupd.k8s import ApiError, Client, Watch, path
from kupd.sim.devcluster import ControlPlane

CM = "configmaps"


@pytest.fixture(scope="module")
def api(control_plane: ControlPlane) -> Iterator[Client]:
    client = Client.from_kubeconfig(str(control_plane.kubeconfig("admin")))
    yield client
    client.close()


@pytest.fixture
def ns(api: Client) -> Iterator[str]:
    """A fresh namespace per test. (No namespace controller runs, so it stays Terminating afterwards.)"""
    name = f"kubeapi-{uuid.uuid4().hex[:8]}"
    api.create(path("", "v1", "namespaces"), {"metadata": {"name": name}})
    yield name
    api.delete(path("", "v1", "namespaces", name))


def configmap(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


# -- authentication and TLS ---------------------------------------------------------------------

def test_from_kubeconfig_with_a_token(api: Client, control_plane: ControlPlane) -> None:
    assert api.server == control_plane.server
    review = api.create(path("authentication.k8s.io", "v1", "selfsubjectreviews"), {})
    assert review["status"]["userInfo"]["username"] == "admin"
    assert api.get(path("", "v1", "namespaces", "default"))["metadata"]["name"] == "default"


def test_ca_data_and_a_rotated_token_file(control_plane: ControlPlane, tmp_path: Path) -> None:
    """certificate-authority-data (as `kupd enroll` writes it) and a relative tokenFile that changes."""
    (tmp_path / "token").write_text("not-a-valid-token\n")
    cfg = {
        "clusters": [{"name": "c", "cluster": {
            "server": control_plane.server,
            "certificate-authority-data": base64.b64encode(control_plane.ca_file.read_bytes()).decode()}}],
        "users": [{"name": "u", "user": {"tokenFile": "token"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
    }
    (tmp_path / "config").write_text(yaml.safe_dump(cfg))
    client = Client.from_kubeconfig(str(tmp_path / "config"), context="x")
    with pytest.raises(ApiError) as e:
        client.get(path("", "v1", "namespaces", "default"))
    assert (e.value.status, e.value.reason) == (401, "Unauthorized")
    (tmp_path / "token").write_text(control_plane.token("admin") + "\n")
    assert client.get(path("", "v1", "namespaces", "default"))["metadata"]["name"] == "default"
    client.close()


def test_tls_is_verified(control_plane: ControlPlane) -> None:
    # The system trust store does not know the test CA: the connection must fail, not fall back.
    unverified = Client(control_plane.server, token=control_plane.token("admin"))
    with pytest.raises(urllib3.exceptions.SSLError):
        unverified.get("/version")
    insecure = Client(control_plane.server, token=control_plane.token("admin"), insecure=True)
    assert "gitVersion" in insecure.get("/version")


def test_unreachable_server_raises_the_connection_error() -> None:
    # No retries inside the client: kupd must see the outage at once.
    client = Client("https://127.0.0.1:9", timeout=2)
    start = time.monotonic()
    with pytest.raises(urllib3.exceptions.NewConnectionError):
        client.get("/version")
    assert time.monotonic() - start < 2


def service_account_client(api: Client, cp: ControlPlane, ns: str, name: str) -> Client:
    api.create(path("", "v1", "serviceaccounts", namespace=ns), {"metadata": {"name": name}})
    review = api.create(path("", "v1", "serviceaccounts", name, namespace=ns, subresource="token"),
                        {"spec": {"audiences": [], "expirationSeconds": 600}})
    return Client(cp.server, token=review["status"]["token"], ca_file=str(cp.ca_file))


def test_forbidden_for_a_user_without_rights(api: Client, control_plane: ControlPlane, ns: str) -> None:
    sa = service_account_client(api, control_plane, ns, "reader")
    # The one right it has: get one ConfigMap (positive control: the token itself is accepted).
    api.create(path("rbac.authorization.k8s.io", "v1", "roles", namespace=ns), {
        "metadata": {"name": "read-one"},
        "rules": [{"apiGroups": [""], "resources": [CM], "resourceNames": ["open"], "verbs": ["get"]}]})
    api.create(path("rbac.authorization.k8s.io", "v1", "rolebindings", namespace=ns), {
        "metadata": {"name": "read-one"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-one"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}]})
    api.create(path("", "v1", CM, namespace=ns), configmap("open", a="1"))
    api.create(path("", "v1", CM, namespace=ns), configmap("closed", a="1"))

    deadline = time.monotonic() + 10  # RBAC reaches the authorizer's cache shortly after the write
    while True:
        try:
            assert sa.get(path("", "v1", CM, "open", namespace=ns))["data"] == {"a": "1"}
            break
        except ApiError as not_yet:
            if not_yet.status != 403 or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    for call in (lambda: sa.get(path("", "v1", CM, "closed", namespace=ns)),
                 lambda: sa.list(path("", "v1", CM, namespace=ns)),
                 lambda: sa.watch(path("", "v1", CM, namespace=ns))):
        with pytest.raises(ApiError) as refused:
            call()
        assert (refused.value.status, refused.value.reason) == (403, "Forbidden")
        assert f"system:serviceaccount:{ns}:reader" in refused.value.message
        assert refused.value.body["kind"] == "Status"
    sa.close()


# -- verbs and errors ---------------------------------------------------------------------------

def test_configmap_crud(api: Client, ns: str) -> None:
    coll = path("", "v1", CM, namespace=ns)
    one = path("", "v1", CM, "settings", namespace=ns)
    created = api.create(coll, configmap("settings", a="1"))
    assert created["metadata"]["namespace"] == ns
    first_rv = created["metadata"]["resourceVersion"]

    got = api.get(one)
    assert got["data"] == {"a": "1"}
    got["data"]["a"] = "2"
    replaced = api.replace(one, got)
    assert replaced["data"] == {"a": "2"}

    stale = {**got, "metadata": {**got["metadata"], "resourceVersion": first_rv}, "data": {"a": "stale"}}
    with pytest.raises(ApiError) as e:
        api.replace(one, stale)
    assert (e.value.status, e.value.reason) == (409, "Conflict")
    assert "modified" in e.value.message

    assert api.patch(one, {"data": {"b": "merge"}})["data"] == {"a": "2", "b": "merge"}
    patched = api.patch(one, {"metadata": {"labels": {"l": "strategic"}}, "data": {"a": None}}, kind="strategic")
    assert patched["data"] == {"b": "merge"}
    assert patched["metadata"]["labels"] == {"l": "strategic"}
    patched = api.patch(one, [{"op": "test", "path": "/data/b", "value": "merge"},
                              {"op": "replace", "path": "/data/b", "value": "json"}], kind="json")
    assert patched["data"] == {"b": "json"}
    applied = api.patch(one, configmap("settings", c="apply"), kind="apply", fieldManager="kupd-test", force=True)
    assert applied["data"]["c"] == "apply"
    assert any(m["manager"] == "kupd-test" for m in applied["metadata"]["managedFields"])

    assert [i["metadata"]["name"] for i in api.list(coll, labelSelector="l=strategic")["items"]] == ["settings"]
    assert api.list(coll, labelSelector="l=other")["items"] == []

    dry = api.delete(one, dryRun="All")
    assert (dry["status"], dry["details"]["name"]) == ("Success", "settings")
    api.get(one)  # dry run: still there
    api.delete(one, {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"})
    with pytest.raises(ApiError) as e:
        api.get(one)
    assert (e.value.status, e.value.reason) == (404, "NotFound")
    assert e.value.message == 'configmaps "settings" not found'
    assert str(e.value) == '404 NotFound: configmaps "settings" not found'


def test_invalid_object_keeps_the_status_details(api: Client, ns: str) -> None:
    with pytest.raises(ApiError) as e:
        api.create(path("", "v1", CM, namespace=ns), configmap("Not_A_Valid_Name"))
    assert (e.value.status, e.value.reason) == (422, "Invalid")
    assert e.value.body["details"]["causes"][0]["field"] == "metadata.name"


def test_unknown_resource_is_not_found(api: Client) -> None:
    with pytest.raises(ApiError) as e:
        api.get(path("", "v1", "nosuchthings"))
    assert (e.value.status, e.value.reason) == (404, "NotFound")


def test_one_client_many_threads(api: Client, ns: str) -> None:
    coll = path("", "v1", CM, namespace=ns)

    def work(i: int) -> str:
        api.create(coll, configmap(f"cm-{i}", i=str(i)))
        return str(api.get(path("", "v1", CM, f"cm-{i}", namespace=ns))["data"]["i"])

    # More threads than pooled connections: the pool does not block, it opens extra ones.
    with ThreadPoolExecutor(max_workers=20) as pool:
        assert sorted(pool.map(work, range(40)), key=int) == [str(i) for i in range(40)]
    assert len(api.list(coll)["items"]) == 40


# -- watches ------------------------------------------------------------------------------------

def test_watch_sees_changes(api: Client, ns: str) -> None:
    coll = path("", "v1", CM, namespace=ns)
    one = path("", "v1", CM, "w", namespace=ns)
    big = "".join(f"{i:07d}\n" for i in range(40_000))  # 320 kB, with newlines inside the JSON string
    rv = api.list(coll)["metadata"]["resourceVersion"]
    with api.watch(coll, resource_version=rv, timeout_seconds=30) as w:
        # The changes are made while the watch is open; a watch from `rv` sees them all in order.
        api.create(coll, configmap("w", a="1"))
        # Far larger than one read of the stream: the event arrives split across reads.
        api.patch(one, {"data": {"a": "2", "big": big}})
        api.delete(one)
        seen: list[tuple[str, str | None, int]] = []
        for event in w:
            if event["type"] == "BOOKMARK":
                continue
            data = event["object"].get("data", {})
            seen.append((event["type"], data.get("a"), len(data.get("big", ""))))
            if event["type"] == "DELETED":
                break
    assert seen == [("ADDED", "1", 0), ("MODIFIED", "2", len(big)), ("DELETED", "2", len(big))]


def test_watch_ends_with_the_server_timeout(api: Client, ns: str) -> None:
    coll = path("", "v1", CM, namespace=ns)
    start = time.monotonic()
    events = list(api.watch(coll, resource_version=api.list(coll)["metadata"]["resourceVersion"],
                            timeout_seconds=2))
    assert 1.5 < time.monotonic() - start < 15
    assert all(e["type"] == "BOOKMARK" for e in events)  # nothing changed, bookmarks are allowed
    assert api.get(path("", "v1", "namespaces", ns))["metadata"]["name"] == ns  # pool still usable


def test_watch_close_from_another_thread(api: Client, ns: str) -> None:
    coll = path("", "v1", CM, namespace=ns)
    w = api.watch(coll, resource_version=api.list(coll)["metadata"]["resourceVersion"], timeout_seconds=120)
    outcome: list[Any] = []

    def consume(watch: Watch) -> None:
        try:
            outcome.append([e["type"] for e in watch])
        except BaseException as e:  # the test asserts no exception escaped
            outcome.append(e)

    reader = threading.Thread(target=consume, args=(w,))
    reader.start()
    time.sleep(1)  # the reader is now blocked waiting for events
    assert reader.is_alive()
    start = time.monotonic()
    w.close()
    reader.join(timeout=5)
    assert not reader.is_alive()
    assert time.monotonic() - start < 2
    assert outcome and isinstance(outcome[0], list), outcome
    w.close()  # idempotent
    assert api.list(coll)["items"] == []


def test_watch_closed_between_events(api: Client, ns: str) -> None:
    coll = path("", "v1", CM, namespace=ns)
    w = api.watch(coll, resource_version=api.list(coll)["metadata"]["resourceVersion"], timeout_seconds=60)
    api.create(coll, configmap("a"))
    api.create(coll, configmap("b"))
    it = iter(w)
    assert next(it)["type"] == "ADDED"
    w.close()  # while the consumer holds an event, not while reading
    assert list(it) == []
    with pytest.raises(RuntimeError, match="only once"):
        iter(w)


@pytest.fixture
def widgets(api: Client) -> Iterator[str]:
    """A CRD made now, so the API server's watch cache of its objects starts at a recent resourceVersion."""
    group, name = "kubeapi-test.kupd.io", f"w{uuid.uuid4().hex[:8]}"
    crd_path = path("apiextensions.k8s.io", "v1", "customresourcedefinitions", f"{name}s.{group}")
    api.create(path("apiextensions.k8s.io", "v1", "customresourcedefinitions"), {
        "metadata": {"name": f"{name}s.{group}"},
        "spec": {"group": group, "scope": "Cluster",
                 "names": {"plural": f"{name}s", "singular": name, "kind": name.capitalize()},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                     "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}})
    coll = path(group, "v1", f"{name}s")
    deadline = time.monotonic() + 30
    while True:
        try:
            api.list(coll)
            break
        except ApiError as e:
            # 404 until the CRD is served, 429 while its storage initializes.
            if e.status not in (404, 429) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    yield coll
    api.delete(crd_path)


def test_watch_with_an_expired_resource_version(api: Client, widgets: str) -> None:
    """An expired resourceVersion is an ERROR event with a 410 Status (not an ApiError): the API
    server has already answered 200 when it finds the version too old."""
    events = list(api.watch(widgets, resource_version="1", timeout_seconds=10))
    assert len(events) == 1, events
    assert events[0]["type"] == "ERROR"
    status = events[0]["object"]
    assert (status["kind"], status["code"]) == ("Status", 410)
    assert status["reason"] in ("Expired", "Gone")


def test_watch_error_status_raises_before_iteration(api: Client) -> None:
    with pytest.raises(ApiError) as e:
        api.watch(path("", "v1", "nosuchthings"))
    assert e.value.status == 404


# -- client certificates ------------------------------------------------------------------------

@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the client's temporary files go (it writes embedded certificate data there for OpenSSL)."""
    d = tmp_path / "scratch"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def test_client_certificate_from_kubeconfig_data(control_plane: ControlPlane, scratch: Path) -> None:
    """An admin.conf-style kubeconfig: CA, client certificate and key embedded as base64."""
    cfg = control_plane.cert_kubeconfig("kupd-cert-admin", ["system:masters"])
    assert cfg.stat().st_mode & 0o777 == 0o600
    user = yaml.safe_load(cfg.read_text())["users"][0]["user"]
    assert set(user) == {"client-certificate-data", "client-key-data"}  # no token to fall back on
    client = Client.from_kubeconfig(str(cfg))
    # The key was written only for OpenSSL to read it, and is gone.
    assert list(scratch.iterdir()) == []
    names = [n["metadata"]["name"] for n in client.list(path("", "v1", "namespaces"))["items"]]
    assert "default" in names
    info = client.create(path("authentication.k8s.io", "v1", "selfsubjectreviews"), {})["status"]["userInfo"]
    assert info["username"] == "kupd-cert-admin"
    assert "system:masters" in info["groups"]
    client.close()


def test_client_certificate_from_files(control_plane: ControlPlane, tmp_path: Path) -> None:
    """As kubelet.conf has it: relative paths, certificate and key in one PEM file."""
    user = yaml.safe_load(control_plane.cert_kubeconfig("kupd-cert-files", ["system:masters"]).read_text())
    pem = base64.b64decode(user["users"][0]["user"]["client-certificate-data"]) + base64.b64decode(
        user["users"][0]["user"]["client-key-data"])
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / "client.pem").write_bytes(pem)
    (tmp_path / "pki" / "ca.crt").write_bytes(control_plane.ca_file.read_bytes())
    cfg = {
        "clusters": [{"name": "c", "cluster": {"server": control_plane.server, "certificate-authority": "pki/ca.crt"}}],
        "users": [{"name": "u", "user": {"client-certificate": "pki/client.pem", "client-key": "pki/client.pem"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    (tmp_path / "kubelet.conf").write_text(yaml.safe_dump(cfg))
    client = Client.from_kubeconfig(str(tmp_path / "kubelet.conf"))
    review = client.create(path("authentication.k8s.io", "v1", "selfsubjectreviews"), {})
    assert review["status"]["userInfo"]["username"] == "kupd-cert-files"
    client.close()


def test_client_certificate_without_rights_is_forbidden(control_plane: ControlPlane) -> None:
    """The certificate is accepted (the user is named), the request is not authorized."""
    client = Client.from_kubeconfig(str(control_plane.cert_kubeconfig("kupd-cert-nobody", [])))
    with pytest.raises(ApiError) as e:
        client.list(path("", "v1", "namespaces"))
    assert (e.value.status, e.value.reason) == (403, "Forbidden")
    assert 'User "kupd-cert-nobody"' in e.value.message
    # Control: without the certificate the same request is anonymous.
    anonymous = Client(control_plane.server, ca_file=str(control_plane.ca_file))
    with pytest.raises(ApiError) as e:
        anonymous.list(path("", "v1", "namespaces"))
    assert e.value.status == 403
    assert 'User "system:anonymous"' in e.value.message
    client.close()
    anonymous.close()


def test_client_certificate_from_another_ca_is_unauthorized(control_plane: ControlPlane) -> None:
    # A valid certificate, but signed by etcd's CA, which the API server does not accept for users.
    etcd = control_plane.etcd_pki
    client = Client(control_plane.server, ca_file=str(control_plane.ca_file),
                    cert_file=str(etcd / "healthcheck-client.crt"), key_file=str(etcd / "healthcheck-client.key"))
    with pytest.raises(ApiError) as e:
        client.list(path("", "v1", "namespaces"))
    assert (e.value.status, e.value.reason) == (401, "Unauthorized")
    client.close()


def test_client_key_that_does_not_match_the_certificate(
        control_plane: ControlPlane, tmp_path: Path, scratch: Path) -> None:
    """Refused when the client is built, before any connection, and the key written for OpenSSL is gone."""
    doc = yaml.safe_load(control_plane.cert_kubeconfig("kupd-cert-one", []).read_text())
    other = yaml.safe_load(control_plane.cert_kubeconfig("kupd-cert-two", []).read_text())
    doc["users"][0]["user"]["client-key-data"] = other["users"][0]["user"]["client-key-data"]
    (tmp_path / "mismatch.conf").write_text(yaml.safe_dump(doc))
    with pytest.raises(ssl.SSLError, match="KEY_VALUES_MISMATCH"):
        Client.from_kubeconfig(str(tmp_path / "mismatch.conf"))
    assert list(scratch.iterdir()) == []
