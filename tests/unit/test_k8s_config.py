"""kupd.k8s's pure parts: kubeconfig parsing, API paths, query strings and error decoding."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from kupd.errors import KupdError
from kupd.k8s import ApiError, Client, Settings, client, load_kubeconfig, parse_kubeconfig, path


def kubeconfig(cluster: dict[str, Any], user: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": user or {}}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "ctx",
    }
    doc.update(top)
    return doc


def write(tmp: Path, doc: Any, name: str = "config") -> Path:
    p = tmp / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(doc))
    return p


# -- kubeconfig ---------------------------------------------------------------------------------

def test_relative_paths_are_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    doc = kubeconfig(
        {"server": "https://10.0.0.1:6443", "certificate-authority": "pki/ca.crt"},
        {"tokenFile": "token", "client-certificate": "../client.crt", "client-key": "/abs/client.key"},
    )
    s = load_kubeconfig(write(tmp_path, doc, "sub/config"))
    base = (tmp_path / "sub").resolve()
    assert s.server == "https://10.0.0.1:6443"
    assert s.ca_file == str(base / "pki" / "ca.crt")
    assert s.token_file == str(base / "token")
    assert s.cert_file == str(base / ".." / "client.crt")
    assert s.key_file == "/abs/client.key"


def test_base64_data_is_decoded() -> None:
    ca, cert, key = b"-----CA-----\n", b"-----CERT-----\n", b"-----KEY-----\n"
    doc = kubeconfig(
        {"server": "https://k:6443", "certificate-authority-data": base64.b64encode(ca).decode()},
        {"client-certificate-data": base64.b64encode(cert).decode(),
         "client-key-data": base64.b64encode(key).decode()},
    )
    assert parse_kubeconfig(doc, Path("/etc/kubernetes"), "kubelet.conf") == Settings(
        server="https://k:6443", ca_data=ca, cert_data=cert, key_data=key)


def test_invalid_base64_is_refused_naming_the_field() -> None:
    doc = kubeconfig({"server": "https://k", "certificate-authority-data": "not base64!"})
    with pytest.raises(KupdError, match=r"certificate-authority-data.*base64"):
        parse_kubeconfig(doc, Path("/"), "x")


def test_token_and_insecure() -> None:
    doc = kubeconfig({"server": "https://k", "insecure-skip-tls-verify": True}, {"token": "abc"})
    assert parse_kubeconfig(doc, Path("/"), "x") == Settings(server="https://k", token="abc", insecure=True)


def test_context_argument_wins_over_current_context() -> None:
    doc = kubeconfig({"server": "https://one"})
    doc["clusters"].append({"name": "c2", "cluster": {"server": "https://two"}})
    doc["contexts"].append({"name": "other", "context": {"cluster": "c2", "user": "u"}})
    assert parse_kubeconfig(doc, Path("/"), "x").server == "https://one"
    assert parse_kubeconfig(doc, Path("/"), "x", context="other").server == "https://two"


@pytest.mark.parametrize("plugin", ["exec", "auth-provider"])
def test_plugin_users_are_refused_with_a_way_out(plugin: str) -> None:
    doc = kubeconfig({"server": "https://k"}, {plugin: {"command": "aws", "name": "gcp"}})
    with pytest.raises(KupdError) as e:
        parse_kubeconfig(doc, Path("/"), "/root/.kube/config")
    msg = str(e.value)
    assert "/root/.kube/config" in msg
    assert "'u'" in msg
    assert plugin in msg
    assert "token or a client certificate" in msg
    assert "kupd enroll" in msg


def test_unknown_context_names_the_file_and_the_context() -> None:
    with pytest.raises(KupdError, match=r"kubeconfig /k\.conf: no context named 'nope'"):
        parse_kubeconfig(kubeconfig({"server": "https://k"}), Path("/"), "/k.conf", context="nope")


def test_missing_current_context() -> None:
    doc = kubeconfig({"server": "https://k"})
    del doc["current-context"]
    with pytest.raises(KupdError, match="no current-context"):
        parse_kubeconfig(doc, Path("/"), "/k.conf")


def test_missing_cluster() -> None:
    doc = kubeconfig({"server": "https://k"})
    doc["contexts"][0]["context"]["cluster"] = "gone"
    with pytest.raises(KupdError, match="no cluster named 'gone'"):
        parse_kubeconfig(doc, Path("/"), "/k.conf")


def test_missing_server() -> None:
    with pytest.raises(KupdError, match="cluster 'c' has no server"):
        parse_kubeconfig(kubeconfig({}), Path("/"), "/k.conf")


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(KupdError, match=re.escape(f"kubeconfig {tmp_path}/absent does not exist")):
        load_kubeconfig(tmp_path / "absent")


@pytest.mark.parametrize("doc", ["just a string", ["a", "list"], None])
def test_not_a_mapping(tmp_path: Path, doc: Any) -> None:
    with pytest.raises(KupdError, match="not a YAML mapping"):
        load_kubeconfig(write(tmp_path, doc))


def test_invalid_yaml(tmp_path: Path) -> None:
    p = tmp_path / "config"
    p.write_text("clusters: [\n")
    with pytest.raises(KupdError, match="not valid YAML"):
        load_kubeconfig(p)


@pytest.mark.parametrize(
    ("user", "message"),
    [
        ({"client-certificate": "c.crt"}, "certificate but no client key"),
        ({"client-key-data": "a2V5"}, "key but no client certificate"),
        ({"token": 42}, "'token' must be a string"),
    ],
)
def test_inconsistent_users_are_refused(user: dict[str, Any], message: str) -> None:
    with pytest.raises(KupdError, match=message):
        parse_kubeconfig(kubeconfig({"server": "https://k"}, user), Path("/"), "x")


def test_insecure_with_a_ca_is_refused() -> None:
    doc = kubeconfig({"server": "https://k", "certificate-authority": "/ca", "insecure-skip-tls-verify": True})
    with pytest.raises(KupdError, match="both a certificate authority and insecure"):
        parse_kubeconfig(doc, Path("/"), "x")


def test_token_file_is_read_at_each_request(tmp_path: Path) -> None:
    # An http:// client builds no TLS context and opens no connection until a request is made.
    token = tmp_path / "token"
    token.write_text("first\n")
    client = Client("http://127.0.0.1:9", token_file=str(token))
    assert client._bearer() == "first"
    token.write_text("rotated")
    assert client._bearer() == "rotated"
    # Mid-rotation (file briefly absent) the last token read stays in use.
    token.unlink()
    assert client._bearer() == "rotated"


def test_token_file_never_readable_fails() -> None:
    client = Client("http://127.0.0.1:9", token_file="/nonexistent/kupd-token")
    with pytest.raises(FileNotFoundError):
        client._bearer()


@pytest.mark.parametrize("server", ["ftp://k", "k:6443", "https://", "https://k/?x=1"])
def test_server_must_be_an_http_url(server: str) -> None:
    with pytest.raises(ValueError, match="http"):
        Client(server)


# -- paths, queries, errors ---------------------------------------------------------------------

@pytest.mark.parametrize(
    ("args", "kwargs", "expected"),
    [
        (("", "v1", "nodes"), {}, "/api/v1/nodes"),
        (("", "v1", "nodes", "cp-1"), {}, "/api/v1/nodes/cp-1"),
        (("", "v1", "pods", "p"), {"namespace": "kube-system", "subresource": "eviction"},
         "/api/v1/namespaces/kube-system/pods/p/eviction"),
        (("coordination.k8s.io", "v1", "leases"), {"namespace": "kupd-system"},
         "/apis/coordination.k8s.io/v1/namespaces/kupd-system/leases"),
        (("kupd.io", "v1alpha1", "directupdates", "a b%?#"), {}, "/apis/kupd.io/v1alpha1/directupdates/a%20b%25%3F%23"),
        (("", "v1", "configmaps", "..x"), {"namespace": "n"}, "/api/v1/namespaces/n/configmaps/..x"),
    ],
)
def test_path(args: tuple[str, ...], kwargs: dict[str, str], expected: str) -> None:
    assert path(*args, **kwargs) == expected


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "/"])
@pytest.mark.parametrize("field", ["name", "namespace", "plural", "subresource", "group", "version"])
def test_path_refuses_segments_that_move_the_url(field: str, bad: str) -> None:
    args: dict[str, str] = {"group": "g", "version": "v1", "plural": "things", "name": "n", "namespace": "ns",
                            "subresource": "status"}
    if field == "group" and bad == "":
        return  # "" is the core group
    args[field] = bad
    with pytest.raises(ValueError, match="invalid"):
        path(**args)


def test_subresource_needs_a_name() -> None:
    with pytest.raises(ValueError, match="needs a name"):
        path("", "v1", "pods", subresource="status")


def test_query_string() -> None:
    q = client._query_string({"watch": True, "dryRun": False, "resourceVersion": None, "limit": 5,
                               "labelSelector": "a=b,c in (d)", "x": ["1", "2"]})
    assert q == "watch=true&dryRun=false&limit=5&labelSelector=a%3Db%2Cc+in+%28d%29&x=1&x=2"


def test_api_error_from_a_status_body() -> None:
    body = b'{"kind":"Status","status":"Failure","message":"configmaps \\"x\\" not found","reason":"NotFound",' \
           b'"code":404}'
    e = client._api_error(404, "Not Found", body)
    assert (e.status, e.reason, e.message) == (404, "NotFound", 'configmaps "x" not found')
    assert e.body["code"] == 404
    assert str(e) == '404 NotFound: configmaps "x" not found'


def test_api_error_from_a_text_body() -> None:
    e = client._api_error(503, "Service Unavailable", b"x" * 2000)
    assert (e.status, e.reason, e.body) == (503, "Service Unavailable", {})
    assert e.message == "x" * 500


def test_api_error_is_an_exception_with_the_fields() -> None:
    e = ApiError(409, "Conflict", "the object has been modified")
    assert str(e) == "409 Conflict: the object has been modified"
    assert e.body == {}
