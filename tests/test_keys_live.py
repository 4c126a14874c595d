"""Team keys on real boxes: add -> sync -> login, revoke -> sync -> refused, live."""
from __future__ import annotations

import os
import socket
import subprocess
import time
import warnings
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ed25519, rsa

import testbed as tb


def person_config(laptop, host: str, key: Path) -> Path:
    """An ssh config where the box entry uses `key` only: that person's laptop."""
    entry = (laptop.home / ".ssh" / "devbox" / "config").read_text()
    block = next(b for b in entry.split("\n\n") if f"Host devbox-{host}\n" in b + "\n")
    mine = str(laptop.identity)
    config = key.parent / f"{key.name}.ssh_config"
    host_blocks = "".join(line + "\n" for line in laptop.ssh_config.read_text().splitlines() if not line.startswith(("Include", "# ")))
    config.write_text(block.replace(f"IdentityFile {mine}", f"IdentityFile {key}") + "\n\n" + host_blocks)
    return config


def ssh_as(config: Path, host: str, *command: str, extra=(), **kw):
    argv = ["ssh", "-F", str(config), "-o", "BatchMode=yes", *extra, f"devbox-{host}", *command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, **kw)


@pytest.fixture
def team(laptop, tmp_path):
    """keys/ with me (the laptop's key) so `up` can verify, plus alice and bob key pairs."""
    people = {}
    for name in ("alice", "bob"):
        people[name] = tb.keygen(tmp_path / f"{name}_ed25519", name)
    done = laptop.devbox("keys", "add", "me", str(laptop.identity) + ".pub")
    assert done.returncode == 0, done.stderr
    laptop.devbox.json("up", laptop.host1)
    return people


def test_new_key_logs_in_after_one_sync(laptop, team):
    alice = person_config(laptop, laptop.host1, team["alice"])
    assert ssh_as(alice, laptop.host1, "true").returncode == 255
    assert laptop.devbox("keys", "add", "alice", str(team["alice"]) + ".pub").returncode == 0
    reports, _ = laptop.devbox.json("keys", "sync", laptop.host1)
    assert reports[0]["changed"] and reports[0]["keys"] == 2
    assert ssh_as(alice, laptop.host1, "whoami").stdout.strip() == "dev"
    again, _ = laptop.devbox.json("keys", "sync", laptop.host1)
    assert again[0]["changed"] is False


def test_revoked_key_is_refused_after_one_sync_while_other_sessions_stay_up(laptop, team):
    for name in ("alice", "bob"):
        laptop.devbox("keys", "add", name, str(team[name]) + ".pub")
    laptop.devbox.json("keys", "sync", laptop.host1)
    alice = person_config(laptop, laptop.host1, team["alice"])
    bob = person_config(laptop, laptop.host1, team["bob"])
    bob_session = subprocess.Popen(["ssh", "-F", str(bob), "-o", "BatchMode=yes", f"devbox-{laptop.host1}",
                                    "echo started; sleep 4; echo bob-still-connected"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    assert bob_session.stdout.readline().strip() == "started"
    assert laptop.devbox("keys", "revoke", "bob").returncode == 0
    reports, _ = laptop.devbox.json("keys", "sync", laptop.host1)
    assert reports[0]["changed"]
    assert ssh_as(bob, laptop.host1, "true").returncode == 255
    assert ssh_as(alice, laptop.host1, "true").returncode == 0
    out, _ = bob_session.communicate(timeout=30)
    assert "bob-still-connected" in out and bob_session.returncode == 0
    revoked = (laptop.work / "keys" / "revoked").read_text()
    assert "bob" in revoked and not (laptop.work / "keys" / "bob.pub").exists()


def test_sync_to_two_hosts_updates_the_reachable_one_and_reports_the_other(laptop, team):
    laptop.devbox("keys", "add", "alice", str(team["alice"]) + ".pub")
    reports, _ = laptop.devbox.json("keys", "sync", laptop.host1, tb.UNREACHABLE, expect=3)
    by_host = {r["host"]: r for r in reports}
    assert by_host[laptop.host1]["changed"] and by_host[laptop.host1]["error"] == ""
    assert by_host[tb.UNREACHABLE]["exit_code"] == 3 and "cannot connect" in by_host[tb.UNREACHABLE]["error"]
    assert ssh_as(person_config(laptop, laptop.host1, team["alice"]), laptop.host1, "true").returncode == 0


def _openssh_pub(key) -> str:
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def _dsa_pub() -> str:
    with warnings.catch_warnings():  # cryptography deprecates DSA: exactly why we refuse it
        warnings.simplefilter("ignore")
        return _openssh_pub(dsa.generate_private_key(key_size=1024))


def bad_keys(tmp_path: Path) -> dict[str, str]:
    good = (tmp_path / "alice_ed25519.pub").read_text().strip()
    rsa_small = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()).decode()
    return {
        "command": f'command="/bin/sh" {good}',
        "from": f'from="*" {good}',
        "private": private,
        "dsa": _dsa_pub(),
        "rsa2048": _openssh_pub(rsa_small),
    }


@pytest.mark.parametrize("kind", ["command", "from", "private", "dsa", "rsa2048"])
def test_dangerous_keys_are_refused_and_never_reach_a_box(laptop, team, tmp_path, kind):
    text = bad_keys(tmp_path)[kind]
    path = tmp_path / f"bad-{kind}.pub"
    path.write_text(text)
    before = sorted(p.name for p in (laptop.work / "keys").iterdir())
    done = laptop.devbox("keys", "add", "mallory", str(path))
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "BEGIN" not in done.stderr and text.split()[-1] not in done.stderr, "never echo key material"
    assert sorted(p.name for p in (laptop.work / "keys").iterdir()) == before
    laptop.devbox.json("keys", "sync", laptop.host1)
    installed = subprocess.run(["docker", "exec", f"devbox-{laptop.host1}", "cat", "/etc/devbox/keys/authorized_keys"],
                               capture_output=True, text=True).stdout
    assert "mallory" not in installed and installed.count("ssh-") == 1


def test_installed_keys_forbid_agent_forwarding_but_allow_local_forwards(laptop, team, tmp_path):
    installed = subprocess.run(["docker", "exec", f"devbox-{laptop.host1}", "cat", "/etc/devbox/keys/authorized_keys"],
                               capture_output=True, text=True).stdout
    assert all(l.startswith("restrict,port-forwarding,pty ") for l in installed.splitlines() if not l.startswith("#"))
    agent = subprocess.run(["ssh-agent", "-s"], capture_output=True, text=True).stdout
    env = dict(os.environ)
    for part in agent.replace(";", "\n").splitlines():
        if "=" in part and part.split("=")[0].strip() in ("SSH_AUTH_SOCK", "SSH_AGENT_PID"):
            key, value = part.strip().split("=", 1)
            env[key] = value
    try:
        subprocess.run(["ssh-add", str(team["alice"])], env=env, capture_output=True, check=True)
        done = subprocess.run(["ssh", "-F", str(laptop.ssh_config), "-A", "-o", "BatchMode=yes", f"devbox-{laptop.host1}",
                               "echo sock=${SSH_AUTH_SOCK:-none}"], capture_output=True, text=True, env=env, timeout=30, stdin=subprocess.DEVNULL)
        assert done.stdout.strip() == "sock=none", done.stdout + done.stderr
    finally:
        subprocess.run(["kill", env["SSH_AGENT_PID"]], capture_output=True)
    port = tb.free_port("127.0.0.1")
    forward = subprocess.Popen(["ssh", "-F", str(laptop.ssh_config), "-N", "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes",
                                "-L", f"127.0.0.1:{port}:127.0.0.1:2222", f"devbox-{laptop.host1}"],
                               stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        banner = b""
        for _ in range(50):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                    banner = sock.recv(64)
                    break
            except OSError:
                time.sleep(0.1)
        assert banner.startswith(b"SSH-2.0-"), "a -L forward (what VS Code uses) reaches the box's own port"
    finally:
        forward.terminate()
    remote = laptop.ssh(f"devbox-{laptop.host1}", "true", extra=["-o", "ExitOnForwardFailure=yes", "-R", "127.0.0.1:0:127.0.0.1:22"])
    assert remote.returncode != 0, "remote (-R) forwards are refused"
