"""Version-skew rules enforced before a node does anything; each error names its rule."""

from __future__ import annotations

import pytest

from kupd.versions import SkewError, Version, check_node_upgrade

V = Version.parse


@pytest.mark.parametrize(
    ("target", "kubeadm", "kubelet", "apiserver", "rule"),
    [
        ("v1.31.2", "v1.31.3", "v1.31.3", None, "no-downgrade"),
        ("v1.30.9", "v1.31.0", None, None, "no-downgrade"),
        ("v1.32.0", "v1.30.5", "v1.30.5", None, "one-minor-at-a-time"),
        ("v1.32.0", "v1.31.5", "v1.30.5", None, "one-minor-at-a-time"),
        ("v2.0.0", "v1.31.5", None, None, "same-major"),
        ("v1.31.2", "v1.31.2", "v1.30.5", "v1.30.5", "kubelet-not-newer-than-apiserver"),
    ],
)
def test_refused_with_the_rule_named(
    target: str, kubeadm: str | None, kubelet: str | None, apiserver: str | None, rule: str
) -> None:
    with pytest.raises(SkewError) as err:
        check_node_upgrade(
            V(target),
            V(kubeadm) if kubeadm else None,
            V(kubelet) if kubelet else None,
            V(apiserver) if apiserver else None,
        )
    assert err.value.rule == rule
    assert f"(rule: {rule})" in str(err.value)


@pytest.mark.parametrize(
    ("target", "kubeadm", "kubelet", "apiserver"),
    [
        ("v1.31.2", "v1.30.5", "v1.30.5", None),  # one minor up
        ("v1.31.2", "v1.31.0", "v1.31.0", "v1.31.2"),  # patch upgrade
        ("v1.31.2", "v1.31.2", "v1.31.2", "v1.31.2"),  # already there: a re-run after a crash
        ("v1.31.2", None, None, None),  # nothing installed yet
        ("v1.31.2", "v1.31.2", "v1.30.5", "v1.32.0"),  # kubelet older than the API server is fine
    ],
)
def test_allowed(target: str, kubeadm: str | None, kubelet: str | None, apiserver: str | None) -> None:
    check_node_upgrade(
        V(target),
        V(kubeadm) if kubeadm else None,
        V(kubelet) if kubelet else None,
        V(apiserver) if apiserver else None,
    )
