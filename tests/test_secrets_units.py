"""Issue 22, the pure parts: config, the volume's files, planning, who may forward an agent, dotfiles."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from devbox.boxenv import BoxEnv, parse_box_env, read_box_env, read_source
from devbox.config import BoxSpec, load_spec
from devbox.dotfiles import DotFile, decide, parse_sums
from devbox.errors import ConfigError
from devbox.facts import MARK, parse_facts
from devbox.keys import parse_public_key, render_authorized_keys
from devbox.keyset import KeySet, keys_for_box, shared_secrets_warning
from devbox.plan import choose_port, plan_up, run_args
from devbox.testbed import keygen

TAG = "devbox-ssh:abc"
KEYS = "# header\nrestrict,port-forwarding,pty ssh-ed25519 AAAA alice\n"
SPEC = BoxSpec("gpu-host-1", gpus="none", env=(("PLAIN", "p"),), secrets=(("TOKEN", "env:MY_TOKEN"),))
ENV = BoxEnv((("PLAIN", "p"),), (("TOKEN", "s3cret-value"),), "Ada <ada@lab.org>", (("", "ghp-token-value"), ("git.lab.org:8443", "lab-value")))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "devbox.toml"
    path.write_text(text)
    return path


def test_env_and_secrets_merge_defaults_with_the_host_table(tmp_path):
    spec = load_spec("h", write(tmp_path, '[defaults]\nenv = { A = "1", B = "2" }\nsecrets = { T = "env:T" }\n'
                                           '[hosts.h]\nenv = { B = "3" }\nsecrets = { U = "file:~/u" }\n'))
    assert spec.env == (("A", "1"), ("B", "3")) and spec.secrets == (("T", "env:T"), ("U", "file:~/u"))


def test_the_box_environment_never_changes_the_spec_hash_and_forward_agent_only_when_on():
    plain = BoxSpec("h")
    lively = BoxSpec("h", env=(("A", "1"),), secrets=(("T", "env:T"),), git_identity="A <a@b>", git_credentials=(("", "env:G"),),
                     dotfiles="~/d")
    assert plain.spec_hash(20000, TAG) == lively.spec_hash(20000, TAG)
    assert plain.spec_hash(20000, TAG) != BoxSpec("h", forward_agent=True).spec_hash(20000, TAG)


def test_the_volume_holds_one_0400_file_per_value_and_a_digest(tmp_path):
    with tarfile.open(fileobj=io.BytesIO(ENV.payload())) as tar:
        files = {m.name: (m.mode, tar.extractfile(m).read().decode()) for m in tar.getmembers()}
    assert files["env/PLAIN"] == (0o400, "p\n") and files["secret/TOKEN"] == (0o400, "s3cret-value\n")
    assert files["git/token"][1] == "ghp-token-value\n" and files["git/host/git.lab.org:8443"][1] == "lab-value\n"
    assert files["digest"][1] == ENV.digest + "\n"
    assert files["gitconfig"][1] == ('[user]\n\tname = "Ada"\n\temail = "ada@lab.org"\n[credential]\n\thelper = devbox\n'
                                     '[credential "https://git.lab.org:8443"]\n\thelper = devbox\n')
    assert ENV.digest != BoxEnv(ENV.env, (("TOKEN", "other"),), ENV.git_identity, ENV.git_tokens).digest


def test_values_never_show_in_a_repr_a_description_or_a_plan():
    facts = parse_facts(f"\n{MARK} docker\n24.0.7\n{MARK} images\n[\"{TAG}\"]\n", TAG)
    facts.host_checked = True
    plan = plan_up(SPEC, facts, TAG, KEYS, "k", box_env=ENV)
    shown = repr(ENV) + ENV.describe() + repr(plan.steps) + "".join(c for s in plan.steps for c in s.commands())
    assert "s3cret-value" not in shown and "ghp-token-value" not in shown and "lab-value" not in shown
    assert "TOKEN" in ENV.describe() and [s.action for s in plan.steps].count("sync_secrets") == 1


def test_a_running_box_with_the_same_digest_needs_nothing_and_a_new_value_only_a_write():
    facts = parse_facts(f"\n{MARK} docker\n24.0.7\n{MARK} images\n[\"{TAG}\"]\n", TAG)
    port = choose_port(SPEC, facts)
    facts.box = {"Id": "c0ffee", "State": {"Running": True}, "Config": {"Labels": {"devbox.spec-hash": SPEC.spec_hash(port, TAG),
                                                                                   "devbox.port": str(port)}}}
    facts.authorized_keys = KEYS.strip()
    facts.box_env = parse_box_env(f"digest {ENV.digest}\nenv PLAIN=p\nsecret TOKEN\n")
    assert plan_up(SPEC, facts, TAG, KEYS, "k", box_env=ENV).steps == []
    changed = BoxEnv(ENV.env, (("TOKEN", "new"),), ENV.git_identity, ENV.git_tokens)
    assert [s.action for s in plan_up(SPEC, facts, TAG, KEYS, "k", box_env=changed).steps] == ["sync_secrets"]


def test_the_box_mounts_the_secrets_read_only_and_never_gets_a_value_as_an_argument():
    facts = parse_facts("", TAG)
    args = run_args(SPEC, facts, 20000, TAG, {"devbox.managed": "true"})
    assert "type=volume,source=devbox-gpu-host-1.secrets,target=/etc/devbox/secrets,readonly" in args
    assert "-e" not in args and "--env" not in args and args[-1] == TAG
    assert run_args(BoxSpec("h", forward_agent=True), facts, 20000, TAG, {})[-3:] == [TAG, "-o", "AllowAgentForwarding=yes"]


def test_read_source_strips_one_newline_and_names_what_is_missing(tmp_path, monkeypatch):
    (tmp_path / "t").write_text("value\n")
    assert read_source("T", f"file:{tmp_path}/t") == "value"
    monkeypatch.delenv("NOPE_X", raising=False)
    with pytest.raises(ConfigError) as err:
        read_source("HF_TOKEN", "env:NOPE_X")
    assert "HF_TOKEN" in err.value.message and "env:NOPE_X" in err.value.message and err.value.exit_code == 2
    with pytest.raises(ConfigError) as err:
        read_source("W", f"file:{tmp_path}/missing")
    assert "W" in err.value.message and f"{tmp_path}/missing" in err.value.message
    for bad in ("two\nlines", "nul\0"):
        (tmp_path / "b").write_text(bad)
        with pytest.raises(ConfigError) as err:
            read_source("B", f"file:{tmp_path}/b")
        assert "two" not in err.value.one_line() and "nul" not in err.value.one_line().replace("NUL", "")
    monkeypatch.setenv("MY_TOKEN", "abc")
    assert read_box_env(SPEC).secrets == (("TOKEN", "abc"),)


def keyset(tmp_path: Path, names: list[str]) -> KeySet:
    keys = [parse_public_key(Path(str(keygen(tmp_path / n, n)) + ".pub").read_text()) for n in names]
    return KeySet(render_authorized_keys(keys), "f", len(keys), people=tuple(sorted(names)), keys=tuple(keys))


def test_forward_agent_is_allowed_for_one_person_and_refused_for_two(tmp_path):
    spec = BoxSpec("h", forward_agent=True)
    one = keys_for_box(spec, keyset(tmp_path, ["ada"]))
    assert all(line.startswith("restrict,port-forwarding,pty,agent-forwarding ") for line in one.authorized_keys.splitlines()[1:])
    with pytest.raises(ConfigError) as err:
        keys_for_box(spec, keyset(tmp_path, ["ed", "bob"]))
    assert "2 people (bob, ed)" in err.value.message and err.value.exit_code == 2
    two = keyset(tmp_path, ["cy", "di"])
    assert keys_for_box(BoxSpec("h"), two) is two and "agent-forwarding" not in two.authorized_keys
    assert "cy, di" in shared_secrets_warning(SPEC, two) and shared_secrets_warning(BoxSpec("h"), two) == ""


def dot(path: str, text: str) -> DotFile:
    import hashlib

    return DotFile(path, hashlib.sha256(text.encode()).hexdigest(), 0o644, text.encode())


def test_dotfiles_replace_only_what_devbox_or_the_image_put_there():
    new, same, mine, skel, old = dot("new", "n"), dot("same", "s"), dot("mine", "m2"), dot(".bashrc", "b2"), dot("old", "o2")
    home = {"same": same.sha256, "mine": dot("x", "edited in the box").sha256, ".bashrc": dot("x", "skel").sha256,
            "old": dot("x", "o1").sha256}
    write, copied = decide((new, same, mine, skel, old), home, {".bashrc": dot("x", "skel").sha256},
                           {"old": dot("x", "o1").sha256, "mine": dot("x", "m1").sha256})
    assert [f.path for f in write] == ["new", ".bashrc", "old"] and copied.kept == ["mine"]
    assert copied.manifest["old"] == old.sha256 and copied.manifest["mine"] == dot("x", "m1").sha256
    assert parse_sums(f"{new.sha256}  new\n{'0' * 64}  sub dir/file\nnoise") == {"new": new.sha256, "sub dir/file": "0" * 64}


def test_every_job_and_so_jupyter_sources_the_box_environment_before_its_own_env():
    from devbox.boxenv import ENV_SCRIPT
    from devbox.jobs import run_script

    script = run_script("j", ["true"], None, ["X=1"])
    assert script.index(f". {ENV_SCRIPT}") < script.index("export X=")
