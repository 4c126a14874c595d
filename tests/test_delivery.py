"""Delivery to a host with its own engine, over real SSH: only the missing layers cross,
a cut link fails in one line (exit 3) and keeps what was committed, the next `up` sends
the rest. The multi-GB versions are marked slow (bench/delivery.py measures them)."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
from pathlib import Path

import pytest

import testbed as tb
from devbox.delivery import PARTIAL_LABEL, Rewrite, deliver, host_chains, inspect_local, save_stream
from devbox.errors import HostUnreachable
from devbox.remote import Host
from devbox.sshconfig import load_user_config

# A ProxyCommand that carries LIMIT bytes towards the host, then drops the link.
CUTTER = """\
import os, select, socket, sys
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))
left = int(sys.argv[3])
while True:
    for ready in select.select([0, sock], [], [])[0]:
        data = os.read(0, 65536) if ready == 0 else sock.recv(65536)
        if not data:
            sys.exit(0)
        if ready == 0:
            left -= len(data)
            if left < 0:
                os._exit(1)
            sock.sendall(data)
        else:
            os.write(1, data)
"""


def cut_route(laptop, tmp_path, limit: int) -> str:
    """An alias for the own-engine host whose link drops after `limit` bytes towards it."""
    cutter = tmp_path / "cutter.py"
    cutter.write_text(CUTTER)
    block = laptop.ssh_config.read_text().split(f"Host {laptop.engine_host}\n", 1)[1].split("\n\n", 1)[0]
    laptop.ssh_config.write_text(laptop.ssh_config.read_text() + f"Host cut-{laptop.engine_host}\n{block}\n"
                                 f"    ProxyCommand {sys.executable} {cutter} %h %p {limit}\n\n")
    return f"cut-{laptop.engine_host}"


@pytest.fixture
def stream_laptop(engine_laptop, engine_host, box_image):
    """The own-engine host with only the base, `delivery = "stream"`; cleaned after."""
    laptop = engine_laptop
    laptop.engine_host_process = engine_host[0].process
    toml = laptop.work / "devbox.toml"
    toml.write_text(toml.read_text().replace("[defaults]\n", '[defaults]\ndelivery = "stream"\n', 1))
    laptop.tag = box_image.tag
    clean_engine(laptop.engine, box_image.tag)
    yield laptop
    clean_engine(laptop.engine, box_image.tag)


def clean_engine(engine, tag: str) -> None:
    ids = engine.docker("ps", "-aq", "--filter", "label=devbox.host").stdout.split()
    if ids:
        engine.docker("rm", "-f", *ids)
    vols = engine.docker("volume", "ls", "-q", "--filter", "label=devbox.host").stdout.split()
    if vols:
        engine.docker("volume", "rm", "-f", *vols)
    nets = engine.docker("network", "ls", "-q", "--filter", "label=devbox.host").stdout.split()
    if nets:
        engine.docker("network", "rm", *nets)
    partials = engine.docker("image", "ls", "-q", "--filter", f"label={PARTIAL_LABEL}").stdout.split()
    engine.docker("rmi", "-f", tag, *partials)


def layer_sizes(tag: str) -> dict[str, int]:
    """diff ID -> bytes of that layer's file in this machine's `docker save`."""
    saved = tarfile.open(fileobj=io.BytesIO(subprocess.run(["docker", "save", tag], capture_output=True, check=True).stdout))
    sizes = {}
    for member in saved.getmembers():
        if member.isfile():
            sizes["sha256:" + hashlib.sha256(saved.extractfile(member).read()).hexdigest()] = member.size
    return sizes


def kill_children(pid: int) -> None:
    """End the sessions of the host's sshd (its per-connection processes, by pid): a cut link."""
    for child in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split():
        kill_children(int(child))
        subprocess.run(["kill", "-9", child])


def drop_connections(pid: int) -> None:
    """Kill the host sshd's per-connection sshd processes only (by pid), deepest first: the
    link drops, and what ran in the session learns it as on a host (EOF), not by a kill."""
    for child in subprocess.run(["pgrep", "-P", str(pid), "-x", "sshd"], capture_output=True, text=True).stdout.split():
        drop_connections(int(child))
        subprocess.run(["kill", "-9", child])


def engine_layers(engine) -> list[list[str]]:
    ids = engine.docker("image", "ls", "-q").stdout.split()
    out = engine.docker("image", "inspect", "--format", "{{json .RootFS.Layers}}", *ids).stdout if ids else ""
    return [json.loads(line) for line in out.splitlines()]


def test_up_streams_only_the_layers_the_host_lacks_with_plain_progress_lines(stream_laptop):
    laptop = stream_laptop
    done = laptop.devbox("up", laptop.engine_host, "--no-verify")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "sending " in done.stderr and "/s" in done.stderr and "\r" not in done.stderr   # not a TTY: lines, no bar
    assert laptop.engine.docker("image", "inspect", laptop.tag).returncode == 0
    clean_engine(laptop.engine, laptop.tag)

    reports, quiet = laptop.devbox.json("up", laptop.engine_host, "--no-verify", "--repin")   # new volumes, new box key
    report = reports[0]
    assert report["delivery"] == "stream-missing-layers"
    image = inspect_local(laptop.tag)
    base = json.loads(laptop.engine.docker("image", "inspect", "--format", "{{json .RootFS.Layers}}", tb.BASE_IMAGE).stdout)
    sizes = layer_sizes(laptop.tag)
    own = sum(sizes[d] for d in image.diff_ids if d not in base)
    assert own < report["bytes_sent"] <= 1.05 * own, (report["bytes_sent"], own)
    assert "sent" not in quiet.stderr      # --json: no progress at all


def test_a_cut_after_a_committed_part_keeps_it_and_the_next_up_sends_only_the_rest(stream_laptop):
    laptop = stream_laptop
    image = inspect_local(laptop.tag)
    host = Host(laptop.engine_host, load_user_config(laptop.ssh_config))
    rewrite = Rewrite(image, host_chains(engine_layers(laptop.engine)), commit_bytes=1)
    runs, second_crossing = [], threading.Event()
    real_stream = host.stream

    def stream(command, source, on_sent):
        part = len(runs)
        runs.append(command)

        def meter(count: int) -> None:
            if part == 1:
                second_crossing.set()
            on_sent(count)

        done = real_stream(command, source, meter)
        if part == 0 and done.ok:
            # the first part is loaded; the second crosses meanwhile, its archive held open
            # until this returns: drop the link now, mid-way through the second part
            assert second_crossing.wait(120), "the second part did not cross while the first one loaded"
            drop_connections(laptop.engine_host_process.pid)
        return done

    host.stream = stream
    with host, pytest.raises(HostUnreachable) as cut:
        deliver(host, rewrite, save_stream(laptop.tag))
    message = cut.value.one_line()
    assert "\n" not in message and "the link dropped" in message and f"devbox up {laptop.engine_host}" in message
    assert cut.value.exit_code == 3
    kept = set(image.diff_ids[:rewrite.committed + 1])
    partials = laptop.engine.docker("image", "ls", "-q", "--filter", f"label={PARTIAL_LABEL}={image.image_id}").stdout.split()
    assert len(partials) == 1 and rewrite.committed >= 1
    assert kept <= {d for layers in engine_layers(laptop.engine) for d in layers}

    reports, _ = laptop.devbox.json("up", laptop.engine_host, "--no-verify")
    base = json.loads(laptop.engine.docker("image", "inspect", "--format", "{{json .RootFS.Layers}}", tb.BASE_IMAGE).stdout)
    sizes = layer_sizes(laptop.tag)
    lacking = sum(sizes[d] for d in image.diff_ids if d not in kept | set(base))
    assert lacking <= reports[0]["bytes_sent"] <= lacking + (1 << 20), (reports[0]["bytes_sent"], lacking)
    assert laptop.engine.docker("image", "ls", "-q", "--filter", f"label={PARTIAL_LABEL}").stdout.split() == []


def test_a_link_cut_mid_transfer_is_one_line_exit_3_and_the_next_up_works(stream_laptop, tmp_path):
    laptop = stream_laptop
    before = {d for layers in engine_layers(laptop.engine) for d in layers}   # the base (and what other tests left)
    done = laptop.devbox("up", cut_route(laptop, tmp_path, 8 << 20), "--no-verify")
    assert done.returncode == 3, done.stdout + done.stderr
    failure = [l for l in done.stdout.splitlines() if "FAILED" in l]
    assert len(failure) == 1 and "the link dropped" in failure[0] and "Traceback" not in done.stderr
    # one `docker load` cut mid-way keeps nothing (it unpacks all before it registers a
    # layer): why delivery commits in parts
    assert {d for layers in engine_layers(laptop.engine) for d in layers} == before
    reports, _ = laptop.devbox.json("up", laptop.engine_host, "--no-verify")
    assert reports[0]["delivery"] == "stream-missing-layers"
    assert laptop.engine.docker("image", "inspect", laptop.tag).returncode == 0


def test_on_a_terminal_up_draws_a_bar_and_keeps_stdout_for_the_result(stream_laptop):
    """stderr a real pty (as in a person's terminal): the tqdm bar is drawn there."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    laptop = stream_laptop
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))   # 30 rows, 100 columns
    done = subprocess.run([sys.executable, "-m", "devbox.cli", "up", laptop.engine_host, "--no-verify"], cwd=laptop.work,
                          env=laptop.devbox.env, stdout=subprocess.PIPE, stderr=follower, text=True, timeout=300)
    os.close(follower)
    screen = b""
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:
            break
        if not data:
            break
        screen += data
    os.close(leader)
    assert done.returncode == 0, done.stdout
    text = screen.decode(errors="replace")
    assert laptop.engine_host in text and "B/s" in text and "\r" in text, text[-2000:]
    assert "B/s" not in done.stdout and "changed" in done.stdout


# ---------------------------------------------------------------- the transport (issue 26: the OpenSSH floor)


def path_with(tmp_path, **tools: str) -> str:
    """A PATH of one folder holding only `tools` (name: script or path to link)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name, what in tools.items():
        if what.startswith("/"):
            (folder / name).symlink_to(what)
        else:
            (folder / name).write_text(what)
            (folder / name).chmod(0o755)
    return str(folder)


def test_streaming_goes_through_the_openssh_client_with_the_users_own_config(stream_laptop, tmp_path):
    laptop = stream_laptop
    calls = tmp_path / "ssh-calls"
    ssh = shutil.which("ssh")
    laptop.devbox.env["PATH"] = path_with(tmp_path, ssh=f'#!/bin/sh\necho "$@" >> {calls}\nexec {ssh} "$@"\n',
                                          docker=shutil.which("docker"))
    own_tmp = Path(tempfile.mkdtemp(prefix="dbx"))   # this run's own: other runs' masters come and go in /tmp (short: a socket path)
    laptop.devbox.env["TMPDIR"] = str(own_tmp)
    reports, done = laptop.devbox.json("up", laptop.engine_host, "--no-verify")
    assert (reports[0]["delivery"], reports[0]["transport"]) == ("stream-missing-layers", "openssh")
    loads = [line for line in calls.read_text().splitlines() if "docker load" in line]
    assert loads and all(line.startswith(f"-F {laptop.ssh_config} ") and f"-- {laptop.engine_host} docker load" in line
                         for line in loads), loads
    assert "BatchMode=yes" in loads[0] and "ClearAllForwardings=yes" in loads[0]
    assert laptop.engine.docker("image", "inspect", laptop.tag).returncode == 0
    assert not list(own_tmp.glob("devbox-ssh-*")), "the stream's own master is closed after up"
    own_tmp.rmdir()


def test_without_an_ssh_client_streaming_goes_through_paramiko(stream_laptop, tmp_path):
    laptop = stream_laptop
    laptop.devbox.env["PATH"] = path_with(tmp_path, docker=shutil.which("docker"))
    done = laptop.devbox("up", laptop.engine_host, "--no-verify")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "through paramiko (no `ssh` client here)" in done.stderr
    assert laptop.engine.docker("image", "inspect", laptop.tag).returncode == 0
