"""`kupd enroll NODE`: give a node's daemon its own identity (run by a cluster administrator).

Creates the ServiceAccount kupd-system/kupd-node-NODE and its role bindings (kupd-member for every
node; kupd-control-plane, Events and the backup Secret for control-plane nodes), asks the
TokenRequest API for a token, and writes the node's kubeconfig (mode 0600, directory 0700).
`--print` only prints the objects, for review or GitOps, and writes nothing. The token is an
enrolment token (24 h by default): the daemon exchanges it for its own at first start
(docs/usage/security.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from kupd import enroll
from kupd.commands import common
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
    common.add_kubeconfig_flags(p)  # the administrator's, resolved as kubectl resolves it
    p.add_argument("--node-kubeconfig", metavar="PATH", default=enroll.KUBECONFIG_PATH,
                   help=f"where to write the node's kubeconfig (default {enroll.KUBECONFIG_PATH}; '-': stdout, "
                        "e.g. for cloud-init user-data)")
    p.add_argument("--duration", type=_duration, default=enroll.DEFAULT_TOKEN_SECONDS, metavar="SECONDS",
                   help="lifetime of the enrolment token (default 86400: 24 h; at least 600). The daemon "
                        "exchanges it for its own token at first start and renews that one itself")
    p.add_argument("--print", dest="print_only", action="store_true",
                   help="print the objects and do nothing else")
    p.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml",
                   help="format of --print (default yaml)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    secret = enroll.parse_secret_ref(args.backup_secret) if args.backup_secret else None
    objs = enroll.manifests(args.node, args.control_plane, secret)
    if args.print_only:
        if args.output == "json":
            sys.stdout.write(json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}, indent=2) + "\n")
        else:
            sys.stdout.write(enroll.to_yaml(objs))
        return 0
    settings = common.kube_settings(args)
    if settings.ca_data:
        ca = settings.ca_data
    elif settings.ca_file:
        try:
            ca = Path(settings.ca_file).read_bytes()
        except OSError as e:
            raise PermanentError(f"cannot read the CA certificate {settings.ca_file}: {e.strerror or e}") from e
    else:
        raise PermanentError("the administrator's kubeconfig names no CA certificate; the node needs one")
    api = common.api_client(args)
    if args.node_kubeconfig == "-":
        # For templating cloud-init user-data: the kubeconfig on stdout, the note on stderr.
        enroll.apply(api, objs)
        token = enroll.request_token(api, args.node, args.duration)
        sys.stdout.write(yaml.safe_dump(enroll.kubeconfig(settings.server, ca, token, args.node), sort_keys=False))
        print(f"enrolled {args.node} as {enroll.username(args.node)}", file=sys.stderr)
        return 0
    path = enroll.enroll(api, args.node, args.control_plane, settings.server, ca, secret, args.node_kubeconfig,
                         args.duration)
    print(f"enrolled {args.node} as {enroll.username(args.node)}; kubeconfig written to {path} (mode 0600)")
    return 0


def _duration(text: str) -> int:
    try:
        seconds = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if seconds < 600:
        raise argparse.ArgumentTypeError("the API server issues tokens for at least 600 seconds")
    return seconds
