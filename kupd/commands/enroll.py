"""`kupd enroll NODE`: give a node's daemon its own identity (run by a cluster administrator).

Creates the ServiceAccount kupd-system/kupd-node-NODE and its role bindings (kupd-member for every
node; kupd-control-plane, Events and the backup Secret for control-plane nodes), asks the
TokenRequest API for a token, and writes the node's kubeconfig (mode 0600, directory 0700).
`--print` only prints the objects, for review or GitOps, and writes nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kupd import enroll
from kupd.errors import PermanentError


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "enroll", help="create a node's kupd identity and write its kubeconfig (cluster admin)",
        description="Create the ServiceAccount kupd-system/kupd-node-NODE with kupd's role bindings, request "
        "a token for it and write a kubeconfig for that node's daemon. Run as a cluster administrator, "
        "after `kubectl apply -f /usr/share/kupd/rbac/`.")
    p.add_argument("node", metavar="NODE", help="the node's Kubernetes Node name")
    p.add_argument("--control-plane", action="store_true",
                   help="the node is a control-plane node: it may coordinate and read the backup Secret")
    p.add_argument("--backup-secret", metavar="NAMESPACE/NAME",
                   help="the backup store's credentials Secret (control-plane nodes only)")
    p.add_argument("--kubeconfig", metavar="PATH", help="the administrator's kubeconfig (default: $KUBECONFIG)")
    p.add_argument("--output", "-o", metavar="PATH", default=enroll.KUBECONFIG_PATH,
                   help=f"where to write the node's kubeconfig (default {enroll.KUBECONFIG_PATH})")
    p.add_argument("--duration", type=int, default=enroll.DEFAULT_TOKEN_SECONDS, metavar="SECONDS",
                   help="token lifetime (default one year; re-run enroll to rotate)")
    p.add_argument("--print", dest="print_only", action="store_true",
                   help="print the objects as YAML and do nothing else")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    secret = enroll.parse_secret_ref(args.backup_secret) if args.backup_secret else None
    objs = enroll.manifests(args.node, args.control_plane, secret)
    if args.print_only:
        sys.stdout.write(enroll.to_yaml(objs))
        return 0
    from kupd import k8s

    kubeconfig = admin_kubeconfig(args.kubeconfig, os.environ, Path.home())
    settings = k8s.load_kubeconfig(kubeconfig)
    if settings.ca_data:
        ca = settings.ca_data
    elif settings.ca_file:
        try:
            ca = Path(settings.ca_file).read_bytes()
        except OSError as e:
            raise PermanentError(f"cannot read the CA certificate {settings.ca_file}: {e.strerror or e}") from e
    else:
        raise PermanentError("the administrator's kubeconfig names no CA certificate; the node needs one")
    api = k8s.api_client(kubeconfig)
    path = enroll.enroll(api, args.node, args.control_plane, settings.server, ca, secret, args.output,
                         args.duration)
    print(f"enrolled {args.node} as {enroll.username(args.node)}; kubeconfig written to {path} (mode 0600)")
    return 0


def admin_kubeconfig(flag: str | None, env: Mapping[str, str], home: Path) -> str:
    """--kubeconfig, else the first existing file of $KUBECONFIG, else ~/.kube/config (as kubectl)."""
    if flag:
        return flag
    for candidate in env.get("KUBECONFIG", "").split(os.pathsep):
        if candidate and os.path.exists(candidate):
            return candidate
    return str(home / ".kube" / "config")
