"""The identity that gets in: the box entry's key is one whose public half the box trusts."""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

import testbed as tb
from devbox.errors import ConfigError
from devbox.keys import parse_public_key
from devbox.keyset import KeySet, choose_identity
from devbox.sshconfig import BoxEntry


def keyset_of(*keys: Path) -> KeySet:
    prints = tuple(sorted(parse_public_key(Path(f"{k}.pub").read_text()).fingerprint for k in keys))
    return KeySet("", "x", len(keys), "", prints)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A HOME with an ops key (reaches hosts) and a personal default key."""
    (tmp_path / ".ssh").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    tb.keygen(tmp_path / ".ssh" / "ops_ed25519", "ops")
    tb.keygen(tmp_path / ".ssh" / "id_ed25519", "me")
    return tmp_path


@pytest.fixture
def agent(tmp_path, monkeypatch):
    """An ssh-agent of our own (killed by pid afterwards); returns `add(key)`."""
    sock = tmp_path / "agent.sock"
    process = tb.start_agent(sock)
    monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
    yield lambda key: subprocess.run(["ssh-add", "-q", str(key)], check=True, capture_output=True)
    os.kill(process.pid, signal.SIGTERM)
    process.wait(timeout=10)


def test_personal_key_is_chosen_when_the_host_is_reached_with_an_ops_key(home):
    ops, mine = home / ".ssh" / "ops_ed25519", home / ".ssh" / "id_ed25519"
    identity = choose_identity(keyset_of(mine), host_files=(str(ops),), host="gpu-1")
    assert identity.path == mine and identity.source == "default key"


def test_the_hosts_own_identityfile_comes_first_when_the_box_trusts_it(home):
    ops, mine = home / ".ssh" / "ops_ed25519", home / ".ssh" / "id_ed25519"
    assert choose_identity(keyset_of(mine, ops), host_files=(str(ops),), host="gpu-1").path == ops


def test_identity_in_devbox_toml_is_the_only_candidate(home):
    ops, mine = home / ".ssh" / "ops_ed25519", home / ".ssh" / "id_ed25519"
    assert choose_identity(keyset_of(mine, ops), configured=str(ops)).path == ops
    with pytest.raises(ConfigError) as refused:
        choose_identity(keyset_of(mine), configured="~/.ssh/ops_ed25519", host="gpu-1")
    assert str(ops) in refused.value.message


def test_encrypted_key_is_matched_by_its_pub_without_a_passphrase(home):
    key = tb.keygen(home / ".ssh" / "locked", "locked")
    subprocess.run(["ssh-keygen", "-q", "-p", "-N", "secret", "-P", "", "-f", str(key)], check=True)
    assert choose_identity(keyset_of(key), host_files=(str(key),)).path == key


def test_no_matching_key_is_refused_with_exit_2_naming_what_was_tried_and_the_remedy(home):
    stranger = tb.keygen(home / "stranger", "stranger")
    keys = keyset_of(stranger)
    with pytest.raises(ConfigError) as refused:
        choose_identity(keys, host_files=(str(home / ".ssh" / "ops_ed25519"),), host="gpu-1")
    error = refused.value
    assert error.exit_code == 2
    for key in ("ops_ed25519", "id_ed25519"):
        fingerprint = parse_public_key((home / ".ssh" / f"{key}.pub").read_text()).fingerprint
        assert fingerprint in error.message
    assert keys.fingerprints[0] in error.message
    assert "devbox keys add NAME" in error.remedy and str(home / ".ssh" / "ops_ed25519.pub") in error.remedy


def test_agent_only_key_is_chosen_and_the_entry_names_no_identityfile(home, agent):
    only_in_agent = tb.keygen(home / "agent_key", "agent")
    agent(only_in_agent)
    keys = keyset_of(only_in_agent)
    only_in_agent.unlink()
    identity = choose_identity(keys, host_files=(str(home / ".ssh" / "ops_ed25519"),), host="gpu-1")
    assert identity.path is None and identity.fingerprint == keys.fingerprints[0] and "ssh-agent" in identity.note
    entry = BoxEntry("gpu-1", 20001, "dev", None).render(Path("/kh"))
    assert "IdentityFile" not in entry and "IdentitiesOnly no" in entry


def test_entry_pins_the_identity_and_never_multiplexes(tmp_path):
    entry = BoxEntry("gpu-1", 20001, "dev", "/home/me/.ssh/my key").render(Path("/kh"))
    assert 'IdentityFile "/home/me/.ssh/my key"' in entry and "IdentitiesOnly yes" in entry
    assert "ControlMaster no" in entry and "ControlPath none" in entry
