"""A laptop as users really have it (import the fixture into a test module to use it).

The plain `laptop` fixture reaches hosts and boxes with one key and a bare ssh config;
real laptops reach hosts with an ops key while the team's keys/ holds a personal one,
end their ~/.ssh/config with `Host *` defaults (multiplexing, IdentitiesOnly), and run
an ssh-agent.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

import testbed as tb


@pytest.fixture
def real_laptop(laptop, monkeypatch):
    """`laptop`, with: hosts reached by ~/.ssh/ops_ed25519; a new personal ~/.ssh/id_ed25519
    as keys/me.pub; `Host *` defaults after the host blocks; an ssh-agent holding the ops key.

    laptop.agent_add(path) puts another key in the agent; laptop.mux is the ControlPath dir.
    """
    ssh = laptop.home / ".ssh"
    ops = ssh / "ops_ed25519"
    for suffix in ("", ".pub"):
        (ssh / f"id_ed25519{suffix}").rename(ssh / f"ops_ed25519{suffix}")
    tb.keygen(ssh / "id_ed25519", "me@laptop")
    # A short directory: a ControlPath (plus ssh's temporary suffix) must fit in 104 bytes.
    laptop.mux = Path(tempfile.mkdtemp(prefix="mux", dir="/tmp"))
    config = laptop.ssh_config.read_text().replace(f"IdentityFile {ssh / 'id_ed25519'}", f"IdentityFile {ops}")
    laptop.ssh_config.write_text(
        config + "Host *\n    ServerAliveInterval 15\n    ControlMaster auto\n"
        f"    ControlPath {laptop.mux}/%C\n    ControlPersist 60\n    IdentitiesOnly yes\n")
    sock = laptop.mux / "agent.sock"
    agent = tb.start_agent(sock)
    monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
    laptop.devbox.env["SSH_AUTH_SOCK"] = str(sock)
    laptop.agent_add = lambda key: subprocess.run(["ssh-add", "-q", str(key)], check=True, capture_output=True)
    laptop.agent_add(ops)
    done = laptop.devbox("keys", "add", "me", str(ssh / "id_ed25519.pub"))
    assert done.returncode == 0, done.stderr
    yield laptop
    for master in laptop.mux.iterdir():
        if master != sock:
            subprocess.run(["ssh", "-S", str(master), "-O", "exit", "mux"], capture_output=True, timeout=10)
    os.kill(agent.pid, signal.SIGTERM)
    agent.wait(timeout=10)
    shutil.rmtree(laptop.mux, ignore_errors=True)
