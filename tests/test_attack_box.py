"""Issue 13, attacked on the real bed: a hostile teammate and a careless user against the box.

Revocation that sticks, nothing destroyed before the new box is proven, port clashes,
two `up`s at once, and the CIS run-time rules (own network, limits, health check).
"""
from __future__ import annotations

import json
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import testbed as tb
from conftest import SUFFIX, remove_boxes
from devbox.config import BoxSpec
from devbox.facts import Facts
from devbox.plan import choose_port
from test_keys_live import person_config, ssh_as, team  # noqa: F401  (team is a fixture)
from test_up import box_ssh, container_id, set_config


def inspect(name: str) -> dict | None:
    done = subprocess.run(["docker", "container", "inspect", name], capture_output=True, text=True)
    return json.loads(done.stdout)[0] if done.returncode == 0 else None


# ---------------------------------------------------------------- 1. revocation sticks


def test_revoked_key_stays_out_although_its_holder_planted_a_key_rewriter(laptop, team):
    assert laptop.devbox("keys", "add", "alice", str(team["alice"]) + ".pub").returncode == 0
    laptop.devbox.json("keys", "sync", laptop.host1)
    alice = person_config(laptop, laptop.host1, team["alice"])
    her_key = Path(str(team["alice"]) + ".pub").read_text().strip()
    # Alice, still trusted, tries every file a key could live in, directly and from a loop.
    direct = ssh_as(alice, laptop.host1, f"echo '{her_key}' >> /etc/devbox/keys/authorized_keys")
    assert direct.returncode != 0 and "Read-only file system" in direct.stderr
    loop = (f"mkdir -p ~/.ssh ~/.devbox; while :; do for f in /etc/devbox/keys/authorized_keys ~/.devbox/authorized_keys "
            f"~/.ssh/authorized_keys; do echo '{her_key}' >> $f 2>/dev/null; done; sleep 0.2; done")
    assert ssh_as(alice, laptop.host1, f"tmux new-session -d -s persist {shlex.quote(loop)}").returncode == 0
    assert laptop.devbox("keys", "revoke", "alice").returncode == 0
    reports, _ = laptop.devbox.json("keys", "sync", laptop.host1)
    assert reports[0]["changed"] and reports[0]["error"] == ""
    assert ssh_as(alice, laptop.host1, "true").returncode == 255
    time.sleep(60)
    assert box_ssh(laptop, laptop.host1, "tmux has-session -t =persist && echo running").stdout.strip() == "running"
    assert ssh_as(alice, laptop.host1, "true").returncode == 255, "a minute later, still refused"
    # --restart: a new box, so nothing she left running survives; data and host key stay.
    pinned = (laptop.home / ".ssh" / "devbox" / "known_hosts").read_text()
    box_ssh(laptop, laptop.host1, "echo kept > /workspace/kept.txt")
    reports, _ = laptop.devbox.json("keys", "sync", laptop.host1, "--restart")
    assert reports[0]["restarted"] and reports[0]["error"] == ""
    assert box_ssh(laptop, laptop.host1, "tmux has-session -t =persist 2>/dev/null || echo gone; cat /workspace/kept.txt"
                   ).stdout.split() == ["gone", "kept"]
    assert (laptop.home / ".ssh" / "devbox" / "known_hosts").read_text() == pinned
    assert ssh_as(alice, laptop.host1, "true").returncode == 255


# ---------------------------------------------------------------- 2. nothing destroyed before it is proven


def _bad_spec(laptop, kind: str) -> str:
    if kind == "docker refuses the spec":      # `docker create` fails: the old box is never touched
        return 'memory = "1m"\n'
    a_file = Path(laptop.bed_dir) / f"not-a-dir-{SUFFIX}"
    a_file.write_text("x")
    return f'volumes = ["{a_file}:/workspace"]\n'   # `docker start` fails: a file over a directory


@pytest.mark.parametrize("kind", ["docker refuses the spec", "the new box cannot start"])
def test_a_bad_spec_leaves_the_running_box_running(laptop, testbed, kind):
    laptop.bed_dir = testbed.workdir
    laptop.devbox.json("up", laptop.host1)
    name = f"devbox-{laptop.host1}"
    before = inspect(name)
    box_ssh(laptop, laptop.host1, "tmux new-session -d -s survivor 'sleep 600'")
    set_config(laptop, _bad_spec(laptop, kind))
    done = laptop.devbox("up", laptop.host1)
    assert done.returncode != 0 and "Traceback" not in done.stderr + done.stdout
    assert len(done.stdout.strip().splitlines()) == 1, done.stdout
    after = inspect(name)
    assert after["Id"] == before["Id"] and after["State"]["Running"]
    assert box_ssh(laptop, laptop.host1, "whoami").stdout.strip() == "dev"
    if kind == "docker refuses the spec":
        assert "was not touched" in done.stdout and after["State"]["StartedAt"] == before["State"]["StartedAt"]
        assert box_ssh(laptop, laptop.host1, "tmux has-session -t =survivor && echo alive").stdout.strip() == "alive"
    else:
        assert "old box is running again" in done.stdout
    leftovers = subprocess.run(["docker", "ps", "-a", "--format", "{{.Names}}", "--filter", f"label=devbox.host={laptop.host1}"],
                               capture_output=True, text=True).stdout.split()
    assert leftovers == [name], "no half-made container behind"


# ---------------------------------------------------------------- 4. port clashes


def test_a_port_held_by_another_program_is_not_chosen(laptop):
    wanted = choose_port(BoxSpec(laptop.host2), Facts())
    with socket.create_server(("127.0.0.1", wanted)):
        reports, _ = laptop.devbox.json("up", laptop.host2)
        assert reports[0]["error"] == "" and reports[0]["port"] != wanted
        assert box_ssh(laptop, laptop.host2, "whoami").stdout.strip() == "dev"


@pytest.fixture
def blind_host(laptop, testbed, tmp_path):
    """A host whose `ss` shows nothing: a listener appears "between" gather and start."""
    bindir = testbed.workdir / f"blind{SUFFIX}"
    bindir.mkdir(mode=0o755)
    (bindir / "ss").write_text("#!/bin/sh\nexit 0\n")
    (bindir / "ss").chmod(0o755)
    host = tb.start_fake_host(f"blind-host{SUFFIX}", 31, testbed.workdir, testbed.workdir / "authorized_keys",
                              extra=f"SetEnv PATH={bindir}:/usr/local/bin:/usr/bin:/bin\n")
    known = laptop.home / ".ssh" / "known_hosts"
    known.write_text(known.read_text() + host.host_key_line() + "\n")
    laptop.ssh_config.write_text(laptop.ssh_config.read_text() + host.config_block(laptop.identity, known))
    yield host.name
    remove_boxes([host.name])
    host.stop()


def test_a_port_taken_after_the_gather_is_retried_with_the_next_one(laptop, blind_host):
    wanted = choose_port(BoxSpec(blind_host), Facts())
    with socket.create_server(("127.0.0.1", wanted)):
        done = laptop.devbox("up", blind_host)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"port {wanted} was taken meanwhile" in done.stderr
    box = inspect(f"devbox-{blind_host}")
    assert box["Config"]["Labels"]["devbox.port"] != str(wanted)
    assert box_ssh(laptop, blind_host, "whoami").stdout.strip() == "dev"


# ---------------------------------------------------------------- 7. two `up`s at once


def test_two_ups_at_once_make_one_box_and_both_succeed(laptop):
    argv = [sys.executable, "-m", "devbox.cli", "up", laptop.host1]
    runs = [subprocess.Popen(argv, cwd=laptop.devbox.cwd, env=laptop.devbox.env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], "\n".join(o + e for o, e in outputs)
    text = "".join(out + err for out, err in outputs)
    assert "Conflict" not in text and "Traceback" not in text
    names = subprocess.run(["docker", "ps", "-a", "--format", "{{.Names}}", "--filter", f"label=devbox.host={laptop.host1}"],
                           capture_output=True, text=True).stdout.split()
    assert names == [f"devbox-{laptop.host1}"]


# ---------------------------------------------------------------- 9. CIS Docker Benchmark, run time


def test_boxes_on_one_host_cannot_reach_each_other(laptop):
    laptop.devbox.json("up", laptop.host1, laptop.host2)
    nets = {h: inspect(f"devbox-{h}")["NetworkSettings"]["Networks"] for h in (laptop.host1, laptop.host2)}
    assert list(nets[laptop.host1]) == [f"devbox-{laptop.host1}.net"], "not the shared docker0 bridge"
    other = next(iter(nets[laptop.host2].values()))["IPAddress"]
    probe = f"timeout 3 bash -c 'exec 3<>/dev/tcp/{other}/2222 && echo reached' 2>/dev/null || echo blocked"
    assert box_ssh(laptop, laptop.host2, probe).stdout.strip() == "reached", "the probe works where it may"
    assert box_ssh(laptop, laptop.host1, probe).stdout.strip() == "blocked"


def test_box_has_limits_a_health_check_and_status_shows_its_health(laptop):
    laptop.devbox.json("up", laptop.host1)
    host = inspect(f"devbox-{laptop.host1}")["HostConfig"]
    assert host["Memory"] > 0 and host["NanoCpus"] > 0 and host["CpuShares"] not in (0, 1024)
    deadline = time.monotonic() + 60
    while (inspect(f"devbox-{laptop.host1}")["State"].get("Health") or {}).get("Status") != "healthy":
        assert time.monotonic() < deadline, "the health check never passed"
        time.sleep(1)
    rows, _ = laptop.devbox.json("status", laptop.host1)
    assert rows[0]["health"] == "healthy"
    assert "running (healthy)" in laptop.devbox("status", laptop.host1).stdout
    set_config(laptop, 'memory = "2g"\ncpus = 1.5\n')
    laptop.devbox.json("up", laptop.host1)
    host = inspect(f"devbox-{laptop.host1}")["HostConfig"]
    assert host["Memory"] == 2 << 30 and host["NanoCpus"] == 1_500_000_000


def test_the_loud_opt_in_for_a_host_root_mount_warns_on_every_up(laptop):
    set_config(laptop, 'allow_host_root_mounts = true\nvolumes = ["workspace:/workspace", "/etc:/host-etc:ro"]\n')
    for _ in range(2):
        done = laptop.devbox("up", laptop.host1)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "WARNING" in done.stderr and "host path /etc" in done.stderr and "root on the host" in done.stderr
    set_config(laptop, 'volumes = ["workspace:/workspace", "/etc:/host-etc:ro"]\n')
    refused = laptop.devbox("up", laptop.host1)
    assert refused.returncode == 2 and "allow_host_root_mounts" in refused.stderr
