"""Pure parsers of command output, on captured output in tests/fixtures/."""

from __future__ import annotations

from pathlib import Path

import pytest

from kupd.host import parsers
from kupd.host.packages import PackageNotFound, pick, upstream_of
from kupd.host.parsers import OutputError
from kupd.versions import Version

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_kubeadm_version_short() -> None:
    assert parsers.kubeadm_version(fixture("kubeadm-version-short.txt")) == Version(1, 31, 2)


def test_kubelet_version() -> None:
    assert parsers.kubelet_version(fixture("kubelet-version.txt")) == Version(1, 31, 2)


def test_kubectl_version_client() -> None:
    assert parsers.kubectl_version(fixture("kubectl-version-client.txt")) == Version(1, 31, 2)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("containerd-version-docker.txt", "1.7.22"),
        ("containerd-version-debian.txt", "1.6.20"),
        ("containerd-version-upstream.txt", "1.7.22"),
    ],
)
def test_containerd_version(name: str, expected: str) -> None:
    assert parsers.containerd_version(fixture(name)) == expected


@pytest.mark.parametrize(
    ("func", "text"),
    [
        (parsers.kubeadm_version, "error: unknown flag -o\n"),
        (parsers.kubeadm_version, ""),
        (parsers.kubelet_version, "Kubernetes v1.31\n"),
        (parsers.kubectl_version, "Server Version: v1.31.2\n"),
        (parsers.containerd_version, "ctr version 1\n"),
        (parsers.kubeadm_version, "v1.31.2; rm -rf /\n"),
    ],
)
def test_unexpected_output_is_refused(func: object, text: str) -> None:
    with pytest.raises(OutputError):
        func(text)  # type: ignore[operator]


def test_upgrade_plan_with_node_column() -> None:
    plan = parsers.upgrade_plan(fixture("kubeadm-upgrade-plan-v1.31.txt"))
    assert plan.cluster_version == Version(1, 30, 5)
    assert plan.kubeadm_version == Version(1, 31, 2)
    assert plan.target_version == Version(1, 31, 2)
    assert plan.apply_command == "kubeadm upgrade apply v1.31.2"
    assert not plan.up_to_date
    by = {(c.component, c.node): c for c in plan.components}
    assert by[("kubelet", "node01")].current == "v1.30.5"
    assert by[("kube-apiserver", "controlplane")].target == "v1.31.2"
    assert by[("kube-proxy", None)].current == "1.30.5"
    assert by[("etcd", "controlplane")].target == "3.5.15-0"
    assert len(plan.components) == 8
    # the component-config table after the rule is not mistaken for components
    assert not any(c.component.endswith(".k8s.io") for c in plan.components)
    assert plan.to_json()["clusterVersion"] == "v1.30.5"


def test_upgrade_plan_before_node_column() -> None:
    plan = parsers.upgrade_plan(fixture("kubeadm-upgrade-plan-v1.29.txt"))
    assert plan.cluster_version == Version(1, 28, 9)
    kubelet = next(c for c in plan.components if c.component == "kubelet")
    assert kubelet.current == "3 x v1.28.9"
    assert kubelet.target == "v1.29.4"
    assert plan.apply_command == "kubeadm upgrade apply v1.29.4"


def test_upgrade_plan_up_to_date() -> None:
    plan = parsers.upgrade_plan(fixture("kubeadm-upgrade-plan-uptodate.txt"))
    assert plan.cluster_version == Version(1, 31, 2)
    assert plan.up_to_date


def test_upgrade_plan_garbage() -> None:
    with pytest.raises(OutputError, match="kubeadm upgrade plan"):
        parsers.upgrade_plan("[preflight] Some fatal errors occurred\n")


def test_dnf_list_showduplicates() -> None:
    rows = parsers.dnf_list(fixture("dnf-list-showduplicates.txt"))
    installed = [r for r in rows if r.installed]
    assert [(r.name, r.version, r.repo) for r in installed] == [("kubeadm", "1.30.5-150500.1.1", "kubernetes")]
    available = [r.version for r in rows if not r.installed and r.arch == "x86_64"]
    assert available == ["1.31.0-150500.1.1", "1.31.1-150500.1.1", "1.31.2-150500.1.1"]


def test_rpm_query() -> None:
    text = "kubeadm 0:1.31.2-150500.1.1\npackage kubelet is not installed\ncontainerd.io 1:1.7.22-3.1.el9\n"
    assert parsers.rpm_query(text) == {"kubeadm": "1.31.2-150500.1.1", "containerd.io": "1:1.7.22-3.1.el9"}


def test_rpm_version_order() -> None:
    versions = ["1.31.10-150500.1.1", "1.31.2-150500.1.1", "1.31.2-150500.1.2", "1:1.0.0-1", "1.31.2~rc1-1"]
    assert sorted(versions, key=parsers.rpm_version_key) == [
        "1.31.2~rc1-1", "1.31.2-150500.1.1", "1.31.2-150500.1.2", "1.31.10-150500.1.1", "1:1.0.0-1",
    ]


@pytest.mark.parametrize(
    ("text", "state"),
    [("active\n", "active"), ("inactive\n", "inactive"), ("failed\n", "failed"), ("activating\n", "activating")],
)
def test_systemctl_is_active(text: str, state: str) -> None:
    assert parsers.systemctl_is_active(text) == state


@pytest.mark.parametrize(
    ("package_version", "upstream"),
    [
        ("1.31.2-1.1", "1.31.2"),
        ("1.31.2-150500.1.1", "1.31.2"),
        ("1.28.2-00", "1.28.2"),
        ("1:1.7.22-1", "1.7.22"),
        ("1.6.20~ds1-1+b1", "1.6.20"),
        ("1.7.22", "1.7.22"),
    ],
)
def test_upstream_of(package_version: str, upstream: str) -> None:
    assert upstream_of(package_version) == upstream


def test_pick_newest_build_of_the_exact_version() -> None:
    available = ["1.31.1-1.1", "1.31.2-1.1", "1.31.2-1.2", "1.31.20-1.1"]
    assert pick("kubeadm", "v1.31.2", available) == "1.31.2-1.2"
    with pytest.raises(PackageNotFound, match=r"kubeadm 1\.31\.3 is not in the package repository"):
        pick("kubeadm", "v1.31.3", available)
