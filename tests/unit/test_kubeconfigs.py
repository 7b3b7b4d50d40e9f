"""Which kubeconfig `kupd` commands use, and how a $KUBECONFIG list merges (kubectl's rules)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from kupd.cli import exit_code
from kupd.commands import common
from kupd.errors import KupdError, NotFoundError, RetryableError, ValidationError
from kupd.k8s import kubeconfigs


@pytest.mark.parametrize(("flag", "env", "existing", "want"), [
    ("/x/kc", {"KUBECONFIG": "/env/kc"}, {"/x/kc", "/env/kc"}, ["/x/kc"]),
    (None, {"KUBECONFIG": "/env/a:/env/b:/env/c:/env/b"}, {"/env/b", "/env/c", "/home/u/.kube/config"},
     ["/env/b", "/env/c"]),
    (None, {}, {"/home/u/.kube/config", "/etc/kupd/kubeconfig"}, ["/home/u/.kube/config"]),
    (None, {"KUBECONFIG": ""}, {"/etc/kupd/kubeconfig"}, ["/etc/kupd/kubeconfig"]),
])
def test_candidates(flag: str | None, env: dict[str, str], existing: set[str], want: list[str]) -> None:
    assert kubeconfigs.candidates(flag, env, Path("/home/u"), existing.__contains__) == want


@pytest.mark.parametrize(("flag", "env", "field"), [
    ("/x/kc", {}, "--kubeconfig"),  # kubectl: an explicit file must exist
    (None, {"KUBECONFIG": "/env/a:/env/b"}, "KUBECONFIG"),
    (None, {}, "--kubeconfig"),
])
def test_nothing_found_is_invalid_input(flag: str | None, env: dict[str, str], field: str) -> None:
    with pytest.raises(ValidationError) as e:
        kubeconfigs.candidates(flag, env, Path("/home/u"), lambda p: False)
    assert e.value.field == field


def test_merge_first_file_wins_and_relative_paths_follow_their_file(tmp_path: Path) -> None:
    a = {"current-context": "a", "clusters": [{"name": "c1", "cluster": {"server": "https://a:6443",
                                                                         "certificate-authority": "ca.crt"}}],
         "users": [{"name": "u", "user": {"tokenFile": "tok"}}],
         "contexts": [{"name": "a", "context": {"cluster": "c1", "user": "u"}}]}
    b = {"current-context": "b", "clusters": [{"name": "c1", "cluster": {"server": "https://b:6443"}},
                                               {"name": "c2", "cluster": {"server": "https://c2:6443"}}],
         "users": [{"name": "u", "user": {"token": "from-b"}},
                   {"name": "v", "user": {"client-certificate": "/abs/v.crt", "client-key": "v.key"}}],
         "contexts": [{"name": "b", "context": {"cluster": "c2", "user": "v"}}]}
    merged = kubeconfigs.merge([(a, tmp_path / "one"), (None, tmp_path), (b, tmp_path / "two")])
    assert merged["current-context"] == "a"
    assert [c["name"] for c in merged["clusters"]] == ["c1", "c2"]
    assert merged["clusters"][0]["cluster"] == {"server": "https://a:6443",
                                                "certificate-authority": str(tmp_path / "one" / "ca.crt")}
    assert merged["users"][0]["user"] == {"tokenFile": str(tmp_path / "one" / "tok")}
    assert merged["users"][1]["user"] == {"client-certificate": "/abs/v.crt",
                                          "client-key": str(tmp_path / "two" / "v.key")}
    assert [c["name"] for c in merged["contexts"]] == ["a", "b"]


def test_context_flag_picks_a_context_of_the_merged_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one, two = tmp_path / "one.yaml", tmp_path / "two.yaml"
    one.write_text(yaml.safe_dump({"current-context": "a", "clusters": [
        {"name": "c1", "cluster": {"server": "https://a.example:6443"}}], "contexts": [
        {"name": "a", "context": {"cluster": "c1"}}]}))
    two.write_text(yaml.safe_dump({"clusters": [{"name": "c2", "cluster": {"server": "https://b.example:6443"}}],
                                   "contexts": [{"name": "b", "context": {"cluster": "c2"}}]}))
    monkeypatch.setenv("KUBECONFIG", f"{one}:{two}")
    args = argparse.Namespace(kubeconfig=None, context=None)
    assert common.kube_settings(args).server == "https://a.example:6443"
    args.context = "b"
    assert common.kube_settings(args).server == "https://b.example:6443"
    args.context = "nope"
    with pytest.raises(ValidationError, match="no context 'nope'"):
        common.kube_settings(args)


@pytest.mark.parametrize(("error", "code"), [
    (ValidationError("f", "bad"), 2), (NotFoundError("x not found"), 3),
    (RetryableError("API unreachable"), 4), (KupdError("refused"), 1),
])
def test_exit_codes(error: KupdError, code: int) -> None:
    assert exit_code(error) == code
