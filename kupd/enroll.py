"""Enrollment: a per-node identity for each kupd daemon.

Each node's daemon authenticates as its own ServiceAccount, `kupd-system/kupd-node-<node>`, with a
token from the TokenRequest API, and is granted kupd's roles through per-node bindings (see
packaging/rbac/ and docs/usage/security.md):

- every node: ClusterRole kupd-member (cluster-wide) and kupd-member-leases (in kupd-system), and
  a Role kupd-grant:<node> to read and watch its own grant Lease, kupd-grant-<node>, by name;
- control-plane nodes, in addition: kupd-control-plane, kupd-control-plane-leases (in kupd-system),
  kupd-events (in default) and, when a backup Secret is named, get on that one Secret.

The admission policies in packaging/rbac/20-admission.yaml key on the ServiceAccount's name, so a
node's identity can write only its own member Lease and its own Node.

This module builds the objects (pure functions), applies them with an administrator's client, asks
for a token and writes the node's kubeconfig (mode 0600 in a 0700 directory).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from kupd import validate
from kupd.errors import PermanentError, ValidationError

if TYPE_CHECKING:
    from kupd.k8s import Client

NAMESPACE = "kupd-system"
SA_PREFIX = "kupd-node-"
USERNAME_PREFIX = f"system:serviceaccount:{NAMESPACE}:{SA_PREFIX}"
LABELS = {"app.kubernetes.io/name": "kupd"}
NODE_LABEL = "kupd.io/node"
BACKUP_ROLE = "kupd-backup-credentials"
DEFAULT_TOKEN_SECONDS = 365 * 24 * 3600
KUBECONFIG_PATH = "/etc/kupd/kubeconfig"


def service_account(node: str) -> str:
    """The ServiceAccount name of a node's daemon: kupd-node-<node>."""
    validate.node_name(node, "node")
    name = SA_PREFIX + node
    if len(name) > 253:
        raise ValidationError("node", f"node name is too long for a ServiceAccount name ({len(name)} > 253)")
    return name


def username(node: str) -> str:
    """The user name the API server sees for a node's daemon."""
    return f"system:serviceaccount:{NAMESPACE}:{service_account(node)}"


def node_of(user: str) -> str | None:
    """The node a kupd user name belongs to, or None when it is no kupd node identity."""
    if not user.startswith(USERNAME_PREFIX):
        return None
    return user[len(USERNAME_PREFIX):] or None


def _labels(node: str) -> dict[str, str]:
    return {**LABELS, NODE_LABEL: node} if len(node) <= 63 else dict(LABELS)


def _binding(kind: str, name: str, role_kind: str, role: str, sa: str, node: str,
             namespace: str | None = None) -> dict[str, Any]:
    md: dict[str, Any] = {"name": name, "labels": _labels(node)}
    if namespace:
        md["namespace"] = namespace
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": md,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}],
    }


def parse_secret_ref(text: str) -> tuple[str, str]:
    """`NAMESPACE/NAME` of the backup credentials Secret."""
    ns, sep, name = text.partition("/")
    if not sep:
        raise ValidationError("backupSecret", f"{text[:80]!r} is not NAMESPACE/NAME")
    validate._check(validate.DNS_LABEL, ns, "backupSecret.namespace", "namespace", 63)
    validate.node_name(name, "backupSecret.name")
    return ns, name


def backup_secret_role(namespace: str, name: str) -> dict[str, Any]:
    """A Role granting `get` on exactly one Secret: the backup store's credentials."""
    validate._check(validate.DNS_LABEL, namespace, "backupSecret.namespace", "namespace", 63)
    validate.node_name(name, "backupSecret.name")
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": BACKUP_ROLE, "namespace": namespace, "labels": dict(LABELS)},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": [name], "verbs": ["get"]}],
    }


def grant_role(node: str) -> dict[str, Any]:
    """A Role to get, list and watch one Lease: the node's own grant (watched by field selector)."""
    from kupd.protocol import grant_lease_name

    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": f"kupd-grant:{node}", "namespace": NAMESPACE, "labels": _labels(node)},
        "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                   "resourceNames": [grant_lease_name(node)], "verbs": ["get", "list", "watch"]}],
    }


def manifests(node: str, control_plane: bool, backup_secret: tuple[str, str] | None = None) -> list[dict[str, Any]]:
    """The objects that give `node` its identity and its roles, in apply order."""
    sa = service_account(node)
    objs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": sa, "namespace": NAMESPACE, "labels": _labels(node)},
         # The daemon does not run in a pod: no token is ever mounted.
         "automountServiceAccountToken": False},
        _binding("ClusterRoleBinding", f"kupd-member:{node}", "ClusterRole", "kupd-member", sa, node),
        _binding("RoleBinding", f"kupd-member:{node}", "ClusterRole", "kupd-member-leases", sa, node, NAMESPACE),
        grant_role(node),
        _binding("RoleBinding", f"kupd-grant:{node}", "Role", f"kupd-grant:{node}", sa, node, NAMESPACE),
    ]
    if control_plane:
        objs += [
            _binding("ClusterRoleBinding", f"kupd-control-plane:{node}", "ClusterRole", "kupd-control-plane",
                     sa, node),
            _binding("RoleBinding", f"kupd-control-plane:{node}", "ClusterRole", "kupd-control-plane-leases",
                     sa, node, NAMESPACE),
            _binding("RoleBinding", f"kupd-events:{node}", "ClusterRole", "kupd-events", sa, node, "default"),
        ]
        if backup_secret is not None:
            ns, name = backup_secret
            objs += [
                backup_secret_role(ns, name),
                _binding("RoleBinding", f"{BACKUP_ROLE}:{node}", "Role", BACKUP_ROLE, sa, node, ns),
            ]
    elif backup_secret is not None:
        raise ValidationError("backupSecret", "only control-plane nodes read the backup credentials")
    return objs


def to_yaml(objs: Iterable[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(list(objs), sort_keys=False)


# -- against the API (an administrator's client) ------------------------------------------


RBAC = "rbac.authorization.k8s.io"
# kind -> (API group, resource); all are namespaced but ClusterRoleBinding.
_RESOURCES = {
    "ServiceAccount": ("", "serviceaccounts"),
    "ClusterRoleBinding": (RBAC, "clusterrolebindings"),
    "RoleBinding": (RBAC, "rolebindings"),
    "Role": (RBAC, "roles"),
}


def apply(api: Client, objs: Iterable[dict[str, Any]]) -> None:
    """Create each object, replacing it if it exists."""
    from kupd import k8s

    for obj in objs:
        kind, md = obj["kind"], obj["metadata"]
        if kind not in _RESOURCES:
            raise PermanentError(f"enroll: unexpected kind {kind}")
        group, plural = _RESOURCES[kind]
        ns = md.get("namespace") if kind != "ClusterRoleBinding" else None
        try:
            k8s.call(api.create, f"create {kind} {md['name']}", k8s.path(group, "v1", plural, namespace=ns), obj)
        except k8s.Conflict:  # it exists already
            # An existing ServiceAccount is kept: replacing it would revoke its tokens.
            if kind != "ServiceAccount":
                k8s.call(api.replace, f"replace {kind} {md['name']}",
                          k8s.path(group, "v1", plural, md["name"], ns), obj)


def request_token(api: Client, node: str, seconds: int = DEFAULT_TOKEN_SECONDS) -> str:
    """A bound token for the node's ServiceAccount (TokenRequest API). Deleting the ServiceAccount
    revokes it; it expires after `seconds` (or the API server's --service-account-max-token-expiration)."""
    from kupd import k8s

    sa = service_account(node)
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"audiences": [], "expirationSeconds": seconds}}
    resp = k8s.call(api.create, f"token for {sa}", k8s.path("", "v1", "serviceaccounts", sa, NAMESPACE, "token"),
                     body)
    return str(resp["status"]["token"])


def kubeconfig(server: str, ca_pem: bytes, token: str, node: str) -> dict[str, Any]:
    """A kubeconfig for the node's daemon: the token inline, the CA inline (nothing else to copy)."""
    validate.safe_url(server, "server")
    user = service_account(node)
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kubernetes", "cluster": {
            "server": server, "certificate-authority-data": base64.b64encode(ca_pem).decode()}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "kupd", "context": {"cluster": "kubernetes", "user": user}}],
        "current-context": "kupd",
    }


def write_private(path: str | os.PathLike[str], text: str) -> Path:
    """Write a credential file: mode 0600, its directory created 0700, atomically."""
    from kupd.fsutil import atomic_write

    target = Path(path)
    if not target.parent.exists():
        target.parent.mkdir(parents=True, mode=0o700)
    atomic_write(target, text.encode(), mode=0o600)
    return target


def enroll(api: Client, node: str, control_plane: bool, server: str, ca_pem: bytes,
           backup_secret: tuple[str, str] | None = None, output: str | os.PathLike[str] = KUBECONFIG_PATH,
           seconds: int = DEFAULT_TOKEN_SECONDS) -> Path:
    """Create the node's identity and roles, and write its kubeconfig to `output`."""
    apply(api, manifests(node, control_plane, backup_secret))
    token = request_token(api, node, seconds)
    return write_private(output, yaml.safe_dump(kubeconfig(server, ca_pem, token, node), sort_keys=False))
