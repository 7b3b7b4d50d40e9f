"""Enrollment: a per-node identity for each kupd daemon.

Each node's daemon authenticates as its own ServiceAccount, `kupd-system/kupd-node-<node>`, with a
token from the TokenRequest API, and is granted kupd's roles through per-node bindings (see
packaging/rbac/ and docs/usage/security.md):

- every node: ClusterRole kupd-member (cluster-wide) and kupd-member-leases (in kupd-system),
  a Role kupd-grant:<node> to read and watch its own grant Lease, kupd-grant-<node>, by name, and
  a Role kupd-token:<node> to request tokens for its own ServiceAccount, so the daemon replaces
  the short-lived enrolment token with its own and keeps rotating it (`rotation_due`);
- control-plane nodes, in addition: kupd-control-plane, kupd-control-plane-leases (in kupd-system),
  kupd-events (in default) and, when a backup Secret is named, get on that one Secret.

The admission policies in packaging/rbac/20-admission.yaml key on the ServiceAccount's name, so a
node's identity can write only its own member Lease and its own Node.

This module builds the objects (pure functions), applies them with an administrator's client, asks
for a token and writes the node's kubeconfig (mode 0600 in a 0700 directory).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Iterable
from datetime import UTC, datetime
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
# The enrolment token only has to last until the daemon's first start, which exchanges it for the
# node's own token (NODE_TOKEN_SECONDS, renewed at half its life): no long-lived secret in
# user-data or on an administrator's disk (docs/usage/security.md).
DEFAULT_TOKEN_SECONDS = 24 * 3600
NODE_TOKEN_SECONDS = 7 * 24 * 3600
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


def token_role(node: str) -> dict[str, Any]:
    """A Role to request tokens for exactly one ServiceAccount: the node's own."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": f"kupd-token:{node}", "namespace": NAMESPACE, "labels": _labels(node)},
        "rules": [{"apiGroups": [""], "resources": ["serviceaccounts/token"],
                   "resourceNames": [service_account(node)], "verbs": ["create"]}],
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
        token_role(node),
        _binding("RoleBinding", f"kupd-token:{node}", "Role", f"kupd-token:{node}", sa, node, NAMESPACE),
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


# -- the node's own token: exchanged at first start, then rotated by the daemon ------------


def token_times(token: str) -> tuple[datetime, datetime] | None:
    """(issued, expires) from a ServiceAccount token's JWT claims; None when the token is not a
    JWT with both (a static token, or anything unreadable: then nothing is rotated). The claims
    are read, not verified: this is the daemon's own credential, and the API server verifies it."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(claims, dict):
        return None
    iat, exp = claims.get("iat"), claims.get("exp")
    if not (isinstance(iat, int) and isinstance(exp, int)) or isinstance(iat, bool) or exp <= iat:
        return None
    try:
        return datetime.fromtimestamp(iat, UTC), datetime.fromtimestamp(exp, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def rotation_due(times: tuple[datetime, datetime], now: datetime, lifetime: int = NODE_TOKEN_SECONDS) -> bool:
    """Whether to request a new token now: the token is an enrolment token (shorter-lived than the
    node's own), or half of its life has passed."""
    issued, expires = times
    span = (expires - issued).total_seconds()
    return span < 0.9 * lifetime or now >= issued + (expires - issued) / 2


def _current_user_name(doc: dict[str, Any]) -> Any:
    ctx_name = doc.get("current-context")
    for c in doc.get("contexts") or []:
        if isinstance(c, dict) and c.get("name") == ctx_name and isinstance(c.get("context"), dict):
            return c["context"].get("user")
    return None


def current_token(doc: Any, base_dir: Path) -> tuple[str | None, str | None]:
    """(inline token, token file) of a kubeconfig's current user; (None, None) for anything else
    (client certificates, no user, not a kubeconfig)."""
    if not isinstance(doc, dict):
        return None, None
    name = _current_user_name(doc)
    for entry in doc.get("users") or []:
        if isinstance(entry, dict) and entry.get("name") == name and isinstance(entry.get("user"), dict):
            user = entry["user"]
            token, token_file = user.get("token"), user.get("tokenFile")
            return (token if isinstance(token, str) and token else None,
                    str(base_dir / token_file) if isinstance(token_file, str) and token_file else None)
    return None, None


def use_token_file(kubeconfig_doc: dict[str, Any], token_file: str) -> dict[str, Any]:
    """The kubeconfig with its current context's user reading `token_file` instead of an inline
    token: the client re-reads the file on every request, so a rotation needs no restart."""
    doc = dict(kubeconfig_doc)
    user_name = _current_user_name(doc)
    users = []
    for entry in doc.get("users") or []:
        if isinstance(entry, dict) and entry.get("name") == user_name:
            user = {k: v for k, v in (entry.get("user") or {}).items() if k != "token"}
            user["tokenFile"] = token_file
            entry = {**entry, "user": user}
        users.append(entry)
    doc["users"] = users
    return doc
