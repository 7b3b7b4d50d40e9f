"""`kupd backup now`: take one etcd backup on this control-plane node and upload it.

Settings come from a TOML file (`--config`, its `[backup]` table shaped like the CR's `spec.backup`,
plus `cluster`, `node` and `workDir`), then from the flags, which win. Credentials come from
`--credentials-file` (JSON, mode 0600) or `--credentials-secret NAMESPACE/NAME` (read with the
kubeconfig resolved as kubectl resolves it: --kubeconfig, $KUBECONFIG, ~/.kube/config, then the
node's /etc/kupd/kubeconfig; --context), or the store's default chain (instance role,
environment) when neither is given.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tomllib
from typing import TYPE_CHECKING, Any

from kupd import validate
from kupd.commands import common
from kupd.errors import ValidationError

if TYPE_CHECKING:
    from kupd.backup import run
    from kupd.k8s import Client

DEFAULT_CLUSTER = "kubernetes"  # kubeadm's default ClusterConfiguration.clusterName


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "backup", help="etcd backups",
        description="etcd backups outside an upgrade. `kupd backup now` takes one on this control-plane node "
        "the way the daemon does before the first control-plane change: snapshot, verify, upload, verify "
        "the upload, apply retention.")
    actions = p.add_subparsers(dest="backup_command", metavar="ACTION", required=True)
    now = actions.add_parser(
        "now",
        help="snapshot this node's etcd, verify it and upload it",
        description="Take one etcd snapshot on this control-plane node, verify it, upload it, "
        "verify the upload and apply retention. Prints the backup record.",
    )
    now.add_argument("--config", metavar="FILE", help="TOML file with a [backup] table (CR spec.backup shape)")
    store = now.add_argument_group("store")
    store.add_argument("--store-type", choices=("s3", "gcs", "file"))
    store.add_argument("--bucket")
    store.add_argument("--prefix")
    store.add_argument("--endpoint", help="custom S3/GCS endpoint URL (MinIO, an emulator)")
    store.add_argument("--region")
    store.add_argument("--path", help="directory for --store-type file")
    store.add_argument("--retention", type=int, help="keep the newest N backups of the cluster (0: all)")
    store.add_argument("--credentials-file", metavar="FILE", help="JSON credentials, mode 0600")
    store.add_argument("--credentials-secret", metavar="NAMESPACE/NAME", help="read credentials from a Secret")
    common.add_kubeconfig_flags(store)
    et = now.add_argument_group("etcd")
    et.add_argument("--etcd-endpoint", action="append", metavar="URL", help="repeatable; default the local member")
    et.add_argument("--cacert")
    et.add_argument("--cert")
    et.add_argument("--key")
    et.add_argument("--dial-timeout", type=float, metavar="SECONDS")
    et.add_argument("--snapshot-timeout", type=float, metavar="SECONDS")
    now.add_argument("--cluster", help=f"cluster name in object names (default {DEFAULT_CLUSTER})")
    now.add_argument("--node", help="this node's name (default: the hostname)")
    now.add_argument("--work-dir", help="where the snapshot is written (default /var/lib/kupd/backup)")
    now.add_argument("--no-verify-download", action="store_true", help="check size and sha256 metadata only")
    now.add_argument("--keep-local", action="store_true", help="keep the local snapshot file")
    common.add_output_flag(now)
    now.set_defaults(func=run_now)


def _config_file(args: argparse.Namespace) -> dict[str, Any]:
    if not args.config:
        return {}
    try:
        with open(args.config, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise ValidationError("--config", f"cannot read {args.config}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ValidationError("--config", f"{args.config} is not valid TOML: {e}") from None
    return dict(doc.get("backup", doc))


def settings(args: argparse.Namespace) -> tuple[dict[str, Any], str, str]:
    """(spec.backup-shaped dict, cluster, node) from the config file and the flags."""
    spec = _config_file(args)
    cluster = str(spec.pop("cluster", "") or args.cluster or DEFAULT_CLUSTER)
    node = str(spec.pop("node", "") or args.node or socket.gethostname().split(".")[0].lower())
    if args.cluster:
        cluster = args.cluster
    if args.node:
        node = args.node
    store: dict[str, Any] = dict(spec.get("store") or {})
    for flag, key in (
        ("store_type", "type"),
        ("bucket", "bucket"),
        ("prefix", "prefix"),
        ("endpoint", "endpoint"),
        ("region", "region"),
        ("path", "path"),
        ("retention", "retention"),
        ("credentials_file", "credentialsFile"),
    ):
        value = getattr(args, flag)
        if value is not None:
            store[key] = value
    if args.credentials_secret:
        namespace, _, name = args.credentials_secret.rpartition("/")
        store["credentialsSecret"] = {"namespace": namespace or "kupd-system", "name": name}
    spec["store"] = store
    et: dict[str, Any] = dict(spec.get("etcd") or {})
    if args.etcd_endpoint:
        et["endpoints"] = list(args.etcd_endpoint)
    for flag, key in (("cacert", "caFile"), ("cert", "certFile"), ("key", "keyFile")):
        value = getattr(args, flag)
        if value is not None:
            et[key] = value
    spec["etcd"] = et
    if args.work_dir:
        spec["workDir"] = args.work_dir
    if args.no_verify_download:
        spec["verifyDownload"] = False
    if args.keep_local:
        spec["keepLocal"] = True
    if not store.get("type"):
        raise ValidationError("--store-type", "no store configured (give --store-type or --config)")
    return spec, validate.node_name(cluster, "--cluster"), validate.node_name(node, "--node")


def run_now(args: argparse.Namespace) -> int:
    import dataclasses

    from kupd.backup import BackupFailed, BackupRetryable, run
    from kupd.clock import SystemClock

    spec, cluster, node = settings(args)
    config = backup_config(spec)
    if args.dial_timeout or args.snapshot_timeout:
        config = dataclasses.replace(
            config,
            etcd=dataclasses.replace(
                config.etcd,
                dial_timeout=args.dial_timeout or config.etcd.dial_timeout,
                snapshot_timeout=args.snapshot_timeout or config.etcd.snapshot_timeout,
            ).validated(),
        )
    try:
        api = _api(args) if config.store.credentials_secret is not None else None
        creds = run.load_credentials(config.store, api)
        record = run.take_backup(config, creds, cluster, node, SystemClock())
    except (BackupFailed, BackupRetryable) as e:
        if args.output in ("json", "yaml"):
            common.emit({"error": str(e), "reason": e.reason}, args.output)
        print(f"kupd backup: {e.reason}: {e}", file=sys.stderr)
        return common.EXIT_FAILED
    if args.output in ("json", "yaml"):
        common.emit(dict(sorted(record.to_json().items())), args.output)
    else:  # table and wide: the record is a list of fields either way
        status = record.to_status()
        width = max(len(k) for k in status)
        for k, v in status.items():
            print(f"{k:<{width}}  {v}")
        for key in record.pruned:
            print(f"{'pruned':<{width}}  {key}")
    return 0


def backup_config(spec: dict[str, Any]) -> run.BackupConfig:
    """The backup's configuration from `spec.backup`'s fields plus the command's own (workDir,
    verifyDownload, keepLocal, store.credentialsFile); the CR's part is parsed by kupd.api.models."""
    from kupd.api import models
    from kupd.backup import etcd, run

    spec = dict(spec)
    access = dict(spec.pop("etcd", None) or {})
    if access:
        # The flags may name the certificates only: the endpoints then are kubeadm's.
        spec["etcd"] = {"endpoints": list(etcd.DEFAULT_ENDPOINTS), **access}
    store = dict(spec.get("store") or {})
    credentials_file = str(store.pop("credentialsFile", "") or "")
    # A store without a retention keeps all its backups here; the CR's default is for the daemon.
    retention = store.pop("retention", 0)
    spec["store"] = store
    work_dir = str(spec.pop("workDir", "") or run.DEFAULT_WORK_DIR)
    verify_download = spec.pop("verifyDownload", True)
    keep_local = spec.pop("keepLocal", False)
    for name, value in (("verifyDownload", verify_download), ("keepLocal", keep_local)):
        if not isinstance(value, bool):
            raise ValidationError(f"backup.{name}", "must be true or false")
    if not isinstance(retention, int) or isinstance(retention, bool):
        raise ValidationError("backup.store.retention", "must be an integer")
    parsed = models.parse_spec(models.Backup, spec, root="backup")
    return run.BackupConfig.from_model(parsed, work_dir=work_dir, verify_download=verify_download,
                                       keep_local=keep_local, credentials_file=credentials_file,
                                       retention=retention, field_path="backup")


def _api(args: argparse.Namespace) -> Client:
    return common.api_client(args)
