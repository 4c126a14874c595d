"""Messages that misled (issue 23.8): each case says what happened in one line with the right
remedy, on the real bed where a host is involved."""
from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest

from devbox.config import load_spec
from devbox.errors import ConfigError, HostUnreachable, KeyRejected
from devbox.keys import parse_public_keys

CPU = '[defaults]\nplaybook = "cpu"\nbase_image = "local/debian:bookworm"\n'


def inspect(name: str) -> dict:
    return json.loads(subprocess.run(["docker", "inspect", name], capture_output=True, text=True).stdout)[0]


def box_sh(laptop, script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "exec", "-u", "1000:1000", "-e", "HOME=/home/dev", f"devbox-{laptop.host1}", "sh", "-c", script],
                          capture_output=True, text=True)


def up(laptop, *args: str) -> None:
    done = laptop.devbox("up", laptop.host1, "--no-verify", *args)
    assert done.returncode == 0, done.stdout + done.stderr


# ---------------------------------------------------------------- on the bed


def test_a_taken_configured_port_fails_the_change_and_leaves_the_old_box_running_untouched(laptop):
    (laptop.work / "devbox.toml").write_text(CPU)
    up(laptop)
    before = inspect(f"devbox-{laptop.host1}")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        (laptop.work / "devbox.toml").write_text(CPU + f"[hosts.{laptop.host1}]\nport = {port}\n")
        done = laptop.devbox("up", laptop.host1, "--no-verify")
    assert done.returncode == 2, done.stdout + done.stderr
    line = done.stdout.strip().splitlines()[-1]
    assert f"port {port} (`port` in devbox.toml) is taken on the host by another program" in line
    assert "the running box was not touched" in line and "ss -ltnp" in line
    after = inspect(f"devbox-{laptop.host1}")
    assert after["Id"] == before["Id"] and after["State"]["Running"]
    assert after["State"]["StartedAt"] == before["State"]["StartedAt"], "the old box was never stopped"


def test_attach_to_a_job_whose_tmux_died_and_reusing_its_name_say_what_happened(laptop):
    (laptop.work / "devbox.toml").write_text(CPU)
    up(laptop)
    started = laptop.devbox("run", laptop.host1, "--name", "sleeper", "--", "sh", "-c", "echo first-run-output; sleep 300")
    assert started.returncode == 0, started.stderr
    box_sh(laptop, "sleep 0.5; tmux kill-server")
    attached = laptop.devbox("attach", laptop.host1, "sleeper", timeout=60)
    assert attached.returncode == 1, attached.stdout + attached.stderr
    assert "devbox: job sleeper is lost: its tmux session is gone" in attached.stderr, attached.stderr
    assert f"devbox logs {laptop.host1} sleeper" in attached.stderr and "no server running" not in attached.stderr
    gone = laptop.devbox("attach", laptop.host1, "nosuchjob", timeout=60)
    assert gone.returncode == 1 and "no job named nosuchjob" in gone.stderr, gone.stderr
    again = laptop.devbox("run", laptop.host1, "--name", "sleeper", "--", "echo", "second")
    assert again.returncode == 2 and "was lost" in again.stderr and "--replace" in again.stderr, again.stdout + again.stderr
    assert "first-run-output" in laptop.devbox("logs", laptop.host1, "sleeper").stdout, "the lost job's log is kept"
    replaced = laptop.devbox("run", laptop.host1, "--name", "sleeper", "--replace", "--", "echo", "second")
    assert replaced.returncode == 0, replaced.stderr


def test_down_purge_after_a_config_change_removes_the_volumes_of_the_old_config_too(laptop):
    (laptop.work / "devbox.toml").write_text(CPU + 'volumes = ["workspace:/workspace", "olddata:/olddata"]\n')
    up(laptop)
    (laptop.work / "devbox.toml").write_text(CPU + 'volumes = ["workspace:/workspace"]\n')
    done = laptop.devbox("down", laptop.host1, "--purge", "--yes")
    assert done.returncode == 0 and f"volume devbox-{laptop.host1}-olddata" in done.stdout, done.stdout + done.stderr
    left = subprocess.run(["docker", "volume", "ls", "-q", "--filter", f"label=devbox.host={laptop.host1}"],
                          capture_output=True, text=True).stdout.split()
    assert left == []


def test_a_host_that_stops_answering_mid_session_is_named_with_a_remedy(laptop):
    from devbox.remote import Host

    with Host(laptop.host1) as host:
        host.run("true")
        host.connection.transport.sock.close()
        host.connection.transport.join(timeout=10)     # its reader thread sees the link gone
        with pytest.raises(HostUnreachable) as lost:
            host.run("true")
    message = lost.value.one_line()
    assert message.startswith(f"{laptop.host1}: stopped answering mid-session") and "is up and reachable" in message


def test_a_link_lost_during_the_box_login_is_one_line_not_no_existing_session(laptop, testbed, monkeypatch):
    import paramiko

    from devbox import verify

    fake = testbed.hosts[laptop.host1]
    pinned = " ".join(Path(str(fake.host_key) + ".pub").read_text().split()[:2])
    opened = verify.open_transport

    def dropped(sock, pinned_key, label):
        transport = opened(sock, pinned_key, label)
        transport.close()           # the link goes between the host key check and the login
        return transport

    monkeypatch.setattr(verify, "open_transport", dropped)
    session = verify.BoxSession(lambda: socket.create_connection((fake.address, fake.port)), pinned, "dev",
                                [paramiko.Ed25519Key.from_private_key_file(str(laptop.identity))], "devbox-box")
    with pytest.raises(HostUnreachable) as lost:
        session.login()
    assert "devbox-box: stopped answering mid-session (during the key login)" in lost.value.one_line()


def test_jupyter_port_in_use_names_its_own_flag(laptop):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        done = laptop.devbox("jupyter", laptop.host1, "--port", str(port))
    assert done.returncode == 2 and f"local port {port} is already in use" in done.stderr
    assert "pass another --port, or leave --port out" in done.stderr and "PORT:LOCAL" not in done.stderr


# ---------------------------------------------------------------- pure


def test_a_utf8_bom_in_devbox_toml_is_read_as_the_editor_meant(tmp_path):
    path = tmp_path / "devbox.toml"
    path.write_bytes(b"\xef\xbb\xbf[hosts.h]\ngpus = [1]\n")
    assert load_spec("h", path).gpus == (1,)
    path.write_bytes(b"[hosts.h]\ngpus = \"\xff\"\n")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_spec("h", path)


def test_a_key_whose_comment_wrapped_onto_a_new_line_says_so(tmp_path):
    from devbox.testbed import keygen

    key = Path(str(keygen(tmp_path / "k", "alice")) + ".pub").read_text().strip()
    with pytest.raises(KeyRejected) as wrapped:
        parse_public_keys(key + "\nlaptop 2024\n")
    assert "line 2 is not a key" in wrapped.value.one_line() and "several keys" not in wrapped.value.one_line()
    with pytest.raises(KeyRejected, match="several keys in one file"):
        parse_public_keys(key + "\n" + key + "\n")



def test_a_gpu_index_out_of_range_gives_the_range(tmp_path):
    path = tmp_path / "devbox.toml"
    path.write_text("[hosts.h]\ngpus = [64]\n")
    with pytest.raises(ConfigError) as wrong:
        load_spec("h", path)
    assert "GPU indices are 0..63" in wrong.value.one_line()
