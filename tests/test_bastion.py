"""Hosts that are really separate (own network namespace, sshd and dockerd): one reachable
only through a bastion, one only through a ProxyCommand. devbox and the OpenSSH client
must both get there, and into the box, whatever the route."""
from __future__ import annotations

import re
import socket
import subprocess
import sys
import time

import pytest

import testbed as tb
from devbox.errors import HostUnreachable
from devbox.remote import Host, _chain


def boxes_on(engine, host: str) -> list[str]:
    return engine.docker("ps", "-q", "--filter", f"label=devbox.host={host}").stdout.split()


def reachable_in_netns(netns: str, port: int) -> bool:
    probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=3)"
    return subprocess.run(tb.in_netns(netns, [sys.executable, "-c", probe]), capture_output=True).returncode == 0


def person_config(laptop, key) -> str:
    """The laptop's config with the box entries using `key`: how that person's laptop looks."""
    entries = (laptop.home / ".ssh" / "devbox" / "config").read_text()
    entries = re.sub(r"(?m)^(\s*IdentityFile) .*$", rf"\1 {key}", entries)
    hosts = "".join(l + "\n" for l in laptop.ssh_config.read_text().splitlines() if not l.startswith(("Include", "# ")))
    path = laptop.home / f"{key.name}.ssh_config"
    path.write_text(entries + "\n" + hosts)
    return str(path)


def wait_for_log(laptop, host: str, job: str, text: str, seconds: float = 30) -> str:
    deadline = time.monotonic() + seconds
    while True:
        done = laptop.devbox("logs", host, job)
        if text in done.stdout or time.monotonic() > deadline:
            return done.stdout + done.stderr
        time.sleep(0.5)


def up_verify_ssh_sync_run(laptop, host: str, tmp_path) -> None:
    """The whole user path on one host: up, verify, OpenSSH into the box, keys sync, run/logs."""
    assert laptop.devbox("keys", "add", "me", f"{laptop.identity}.pub").returncode == 0
    reports, _ = laptop.devbox.json("up", host)
    report = reports[0]
    assert report["error"] == "" and report["checks"]
    assert {c["status"] for c in report["checks"]} <= {"ok", "skipped"}, report["checks"]
    # The box runs on the host's own engine, published on ITS 127.0.0.1 only.
    assert boxes_on(laptop.engine, host) and not subprocess.run(
        ["docker", "ps", "-q", "--filter", f"label=devbox.host={host}"], capture_output=True, text=True).stdout.strip()
    assert reachable_in_netns(f"dbx-{laptop.bed.tag}-inner", report["port"])

    checks, _ = laptop.devbox.json("verify", host)
    assert {c["status"] for c in checks[0]["checks"]} <= {"ok", "skipped"}, checks

    entry = (laptop.home / ".ssh" / "devbox" / "config").read_text()
    assert f"ProxyJump {host}\n" in entry  # OpenSSH reuses the user's own route to the host
    assert laptop.ssh(f"devbox-{host}", "whoami").stdout.strip() == "dev"

    alice = tb.keygen(tmp_path / "alice_ed25519", "alice")
    as_alice = ["ssh", "-F", person_config(laptop, alice), "-o", "BatchMode=yes", f"devbox-{host}", "whoami"]
    assert subprocess.run(as_alice, capture_output=True, timeout=30).returncode == 255
    assert laptop.devbox("keys", "add", "alice", f"{alice}.pub").returncode == 0
    synced, _ = laptop.devbox.json("keys", "sync", host)
    assert synced[0]["changed"] and synced[0]["keys"] == 2
    assert subprocess.run(as_alice, capture_output=True, text=True, timeout=30).stdout.strip() == "dev"

    started = laptop.devbox("run", host, "--name", "hello", "--", "sh", "-c", "echo hello from the box; hostname")
    assert started.returncode == 0, started.stdout + started.stderr
    assert "hello from the box" in wait_for_log(laptop, host, "hello", "hello from the box")


def test_a_host_reachable_only_through_a_bastion(separate_laptop, tmp_path):
    up_verify_ssh_sync_run(separate_laptop, separate_laptop.inner_jump, tmp_path)


def test_a_host_reachable_only_through_a_proxycommand(separate_laptop, tmp_path):
    up_verify_ssh_sync_run(separate_laptop, separate_laptop.inner_cmd, tmp_path)


def test_the_laptop_has_no_route_to_the_inner_host(separate_laptop):
    """What makes the two tests above mean something: without the route, nothing gets there."""
    inner = separate_laptop.bed.hosts["inner"]
    with pytest.raises(OSError):
        socket.create_connection((inner.address, 22), timeout=3)
    started = time.monotonic()
    with pytest.raises(HostUnreachable, match="cannot connect over SSH"), Host(separate_laptop.inner_direct) as direct:
        direct.run("true")
    assert time.monotonic() - started < 5


def test_a_two_hop_proxyjump_reaches_each_hop_through_the_previous_one(separate_laptop):
    """`ProxyJump bastion,inner-direct`: inner-direct has no route of its own; only the chain
    laptop -> bastion -> inner-direct -> host gets there (devbox used to keep the last hop only)."""
    inner = separate_laptop.bed.hosts["inner"]
    with Host(separate_laptop.inner_chain) as chained:
        assert inner.address in chained.run("hostname -I").stdout.split()
        assert [h.original_host for h in _chain(chained.connection)] == [
            separate_laptop.inner_chain, separate_laptop.inner_direct, separate_laptop.bastion]
    assert separate_laptop.ssh(separate_laptop.inner_chain, "true").returncode == 0  # OpenSSH agrees


def test_up_on_a_host_missing_from_the_ssh_config_says_add_a_host_block(laptop):
    done = laptop.devbox("up", "nohost-zz")
    assert done.returncode == 2
    assert "nohost-zz is not a Host in your ~/.ssh/config (add a Host nohost-zz block)" in done.stdout + done.stderr


def test_a_bed_left_by_a_run_that_died_is_swept_by_the_next(separate_bed, tmp_path):
    """Finalizers do not run after a SIGKILL: the record a bed leaves names what to undo.
    (The live session's own bed is left alone: its run is alive.)"""
    import json

    from devbox.testbed import _free_subnet, _ip

    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = tb.SeparateBed(tmp_path / "dead", "dead" + separate_bed.tag[:2], _free_subnet())
    dead.workdir.mkdir()
    namespace = dead.add_netns("bastion")
    dead.add_link(None, f"{dead.prefix}.1", namespace, f"{dead.prefix}.2", "l")
    _ip("route", "add", "unreachable", f"{dead.prefix}.4/30")
    dead.record()
    record = tb.BEDS_DIR / f"{dead.tag}.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "pid": gone.pid}))

    assert dead.tag in tb.sweep_dead_beds()
    assert namespace not in _ip("netns", "list").stdout
    assert dead.link_name("l") not in _ip("link").stdout
    assert f"{dead.prefix}.4/30" not in _ip("route").stdout and not record.exists()
    assert separate_bed.netns_name("inner") in _ip("netns", "list").stdout
