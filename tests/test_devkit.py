"""Issue 11 on the real test bed: the dev kit, apt/pip extras, `devbox jupyter`, `devbox forward`
and the VS Code Remote-SSH check, all through the real `devbox` CLI, sshd and dockerd.

The JupyterLab image is built on local/debian:bookworm with apt = ["python3-pip"] and
pip = ["jupyterlab"] (Debian's python3 is externally managed: pip-install.sh puts it in a
venv); it is cached between runs by its content tag.
"""
from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import testbed as tb
from devbox.commands.verify import vscode_client
from devbox.image import ImageSpec, build_locally, content_tag
from devbox.verify import FAIL, VSCodeProbe, vscode_check
from test_image import RunningBox

TEST_BASE = "local/devkit-test-base:bookworm"
JUPYTER_EXTRAS = dict(apt=("python3-pip",), pip=("jupyterlab",))


@pytest.fixture(scope="session")
def devkit_base(testbed) -> str:
    """local/debian:bookworm plus this machine's own CAs (/usr/local/share/ca-certificates), as a
    company's base image carries its proxy's CA: pip in the build must reach PyPI over https."""
    context = Path(testbed.workdir) / "devkit-base"
    (context / "certs").mkdir(parents=True, exist_ok=True)
    for cert in Path("/usr/local/share/ca-certificates").glob("*.crt"):
        (context / "certs" / cert.name).write_bytes(cert.read_bytes())
    (context / "Dockerfile").write_text(f"FROM {tb.BASE_IMAGE}\nCOPY certs/ /usr/local/share/ca-certificates/\n")
    subprocess.run(["docker", "build", "-q", "-t", TEST_BASE, str(context)], check=True, capture_output=True)
    return TEST_BASE


@pytest.fixture(scope="session")
def jupyter_image(devkit_base):
    return build_locally(ImageSpec(devkit_base, **JUPYTER_EXTRAS))


def set_config(laptop, base: str, extra: str = "") -> None:
    (laptop.work / "devbox.toml").write_text(f'[defaults]\nplaybook = "cpu"\nbase_image = "{base}"\n{extra}')


def up(laptop, host: str) -> dict:
    reports, done = laptop.devbox.json("up", host)
    assert reports[0]["error"] == "", reports[0]
    return reports[0]


class Background:
    """A long-running `devbox` command (jupyter, forward): its stdout lines, stderr kept, Ctrl-C."""

    def __init__(self, laptop, *args: str):
        self.started = time.monotonic()
        self.process = subprocess.Popen([sys.executable, "-m", "devbox.cli", *args], cwd=laptop.work, env=laptop.devbox.env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.errors: list[str] = []
        threading.Thread(target=lambda: [self.lines.put(line) for line in self.process.stdout], daemon=True).start()
        threading.Thread(target=lambda: [self.errors.append(line) for line in self.process.stderr], daemon=True).start()

    def line(self, timeout: float = 180) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output in {timeout} s; exit {self.process.poll()}; stderr: {''.join(self.errors)}") from None

    def interrupt(self) -> int:
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=20)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def http_status(url: str, headers: dict | None = None) -> int:
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with direct.open(urllib.request.Request(url, headers=headers or {}), timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def wait_until(check, timeout: float = 30, what: str = ""):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
    return value


def local_listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def published_ports(box: str) -> dict:
    return json.loads(subprocess.run(["docker", "inspect", box], capture_output=True, text=True, check=True).stdout)[0][
        "NetworkSettings"]["Ports"]


def jobs_of(laptop, host: str) -> dict[str, dict]:
    jobs, _ = laptop.devbox.json("ps", host)
    return {j["name"]: j for j in jobs}


# ---------------------------------------------------------------- JupyterLab


def test_jupyter_answers_through_the_tunnel_only_with_its_token_and_outlives_the_tunnel(laptop, jupyter_image):
    host, box = laptop.host1, f"devbox-{laptop.host1}"
    set_config(laptop, TEST_BASE, 'apt = ["python3-pip"]\npip = ["jupyterlab"]\n')
    up(laptop, host)
    session = Background(laptop, "jupyter", host, "--json")
    try:
        announced = json.loads(session.line())
        url = announced["url"]
        base, token = re.match(r"^(http://127\.0\.0\.1:(\d+))/lab\?token=([0-9a-f]{48})$", url).group(1, 3)
        assert announced["job"] == "jupyter" and base.endswith(f":{announced['local_port']}")
        assert http_status(f"{base}/api/status?token={token}") == 200
        first_200 = time.monotonic() - session.started
        assert http_status(f"{base}/api/status", {"Authorization": f"token {token}"}) == 200
        assert http_status(f"{base}/api/status") == 403
        assert http_status(f"{base}/api/status?token={'0' * 48}") == 403
        # Nothing is published for Jupyter: the box publishes only its sshd, on the host's loopback.
        assert published_ports(box) == {"2222/tcp": [{"HostIp": "127.0.0.1", "HostPort": published_ports(box)["2222/tcp"][0]["HostPort"]}]}
        listeners = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True, check=True).stdout
        assert not re.search(r":8888\s", listeners), listeners
        inside = laptop.ssh(box, "stat -c %a ~/.devbox/jupyter/token; cat /proc/net/tcp /proc/net/tcp6")
        assert inside.stdout.splitlines()[0] == "600", inside
        listening_8888 = [line.split()[1] for line in inside.stdout.splitlines()[1:] if ":22B8 " in line and line.split()[3] == "0A"]
        assert listening_8888 == ["0100007F:22B8"], "in the box, Jupyter listens on 127.0.0.1 only"
        # Ctrl-C closes the tunnel and leaves the server.
        assert session.interrupt() == 0, "".join(session.errors)
        assert not local_listening(int(announced["local_port"]))
    finally:
        session.stop()
    assert jobs_of(laptop, host)["jupyter"]["state"] == "running"
    started = jobs_of(laptop, host)["jupyter"]["started"]
    report = up(laptop, host)
    assert report["changed"] is False and report["steps"] == []
    again = Background(laptop, "jupyter", host)   # the text a person reads
    try:
        said = again.line()
        url = re.match(rf"^JupyterLab on {re.escape(host)}: (http://127\.0\.0\.1:\d+/lab\?token=\w+)$", said.strip()).group(1)
        assert url.endswith(f"token={token}"), "the same server, the same token"
        assert "Ctrl-C closes the tunnel" in again.line()
        assert http_status(url.replace("/lab?", "/api/status?")) == 200
        warm_200 = time.monotonic() - again.started
        assert jobs_of(laptop, host)["jupyter"]["started"] == started, "the server was not restarted"
        assert again.interrupt() == 0
    finally:
        again.stop()
    stopped, _ = laptop.devbox.json("jupyter", host, "--stop")
    assert stopped["name"] == "jupyter" and stopped["state"].startswith("exited")
    print(f"\nMEASURED devbox jupyter -> first HTTP 200 on /api/status: {first_200:.2f} s (server start included), "
          f"{warm_200:.2f} s with the server already running")


def test_a_box_without_jupyterlab_gets_one_line_naming_the_pip_fix(laptop):
    up(laptop, laptop.host1)
    done = laptop.devbox("jupyter", laptop.host1)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and 'pip = ["jupyterlab"]' in done.stderr and "no JupyterLab" in done.stderr


# ---------------------------------------------------------------- the kit: rsync, forwards, VS Code


def test_the_default_kit_rsync_both_ways_and_vscode_check_passes(laptop, tmp_path):
    report = up(laptop, laptop.host1)
    vscode = next(c for c in report["checks"] if c["name"] == "VS Code Remote-SSH")
    assert vscode["status"] == "ok" and "curl" in vscode["detail"] and "sftp" in vscode["detail"], vscode
    box = f"devbox-{laptop.host1}"
    ssh = f"ssh -F {laptop.ssh_config} -o BatchMode=yes"
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "data.bin").write_bytes(os.urandom(100_000))
    sent = subprocess.run(["rsync", "-a", "-e", ssh, f"{source}/", f"{box}:/workspace/synced/"], capture_output=True, text=True, timeout=60)
    assert sent.returncode == 0, sent.stderr
    back = tmp_path / "back"
    got = subprocess.run(["rsync", "-a", "-e", ssh, f"{box}:/workspace/synced/", f"{back}/"], capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stderr
    assert (back / "sub" / "data.bin").read_bytes() == (source / "sub" / "data.bin").read_bytes()
    kit = laptop.ssh(box, "for c in rsync curl git less vi; do command -v $c >/dev/null || echo missing $c; done; ls /etc/ssl/certs | head -1")
    assert "missing" not in kit.stdout and kit.stdout.strip(), kit


def test_forward_reaches_a_box_port_and_comes_back_after_the_link_drops(laptop):
    up(laptop, laptop.host1)
    local = tb.free_port("127.0.0.1")
    forward = Background(laptop, "forward", laptop.host1, f"2222:{local}", "--json")

    def banner() -> bytes:
        try:
            with socket.create_connection(("127.0.0.1", local), timeout=5) as sock:
                return sock.recv(64)
        except OSError:
            return b""

    try:
        line = json.loads(forward.line(60))
        assert line["forwards"] == [{"box_port": 2222, "local_port": local}]
        assert banner().startswith(b"SSH-2.0-"), "the box's own sshd answers through the forward"
        # Drop the link from the box's side: end the sshd session serving the tunnel.
        kill = ("for p in /proc/[0-9]*; do case \"$(tr '\\0' ' ' < $p/cmdline 2>/dev/null)\" in 'sshd: dev'*) kill ${p#/proc/};; esac; done")
        subprocess.run(["docker", "exec", "-u", "1000:1000", f"devbox-{laptop.host1}", "sh", "-c", kill], check=True)
        wait_until(lambda: any("link dropped" in e for e in forward.errors), 20, "the drop to be noticed")
        wait_until(lambda: any("reconnected" in e for e in forward.errors), 30, "the reconnection")
        assert banner().startswith(b"SSH-2.0-")
        assert forward.interrupt() == 0
        assert not local_listening(local)
    finally:
        forward.stop()
    busy = socket.create_server(("127.0.0.1", 0))
    try:
        taken = laptop.devbox("forward", laptop.host1, f"2222:{busy.getsockname()[1]}")
        assert taken.returncode == 2 and "already in use" in taken.stderr and taken.stderr.count("\n") == 1
    finally:
        busy.close()


def test_vscode_check_fails_with_the_download_remedy_on_an_image_without_curl_and_wget(box_image, tmp_path):
    bare = f"{box_image.tag}-nocurl"
    dockerfile = (f"FROM {box_image.tag}\nUSER root\nRUN dpkg --purge curl && ! command -v wget\n"
                  "USER 1000:1000\n")
    subprocess.run(["docker", "build", "-q", "-t", bare, "-"], input=dockerfile, text=True, check=True, capture_output=True)
    box = RunningBox(bare, f"nocurl-{tmp_path.name[-12:]}", tmp_path)
    try:
        try:
            box.start()
        except subprocess.CalledProcessError as exc:
            raise AssertionError(f"docker run of {bare} failed: {exc.stderr}") from None
        options = ["-F", "/dev/null", "-o", f"Port={box.port}", "-o", "User=dev", "-i", str(box.key), "-o", "IdentitiesOnly=yes",
                   "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={box.known_hosts(tmp_path / 'kh')}"]

        def run(command: str, stdin=None, timeout=120):
            done = subprocess.run(["ssh", *options, "-o", "BatchMode=yes", "127.0.0.1", command], capture_output=True, text=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL)
            return done.returncode, done.stdout, done.stderr

        probe = VSCodeProbe.read(run)
        assert probe.fetch == "" and probe.tar == "yes" and probe.home == probe.tmp == "ok", probe
        check = vscode_check(probe, *vscode_client(options, "127.0.0.1"))
        assert check.status == FAIL
        assert check.detail.startswith("no curl or wget") and "remote.SSH.localServerDownload" in check.detail
        assert " | " not in check.detail, "only that requirement fails: -D forward and sftp work"
    finally:
        box.remove()
        subprocess.run(["docker", "rm", "-f", box.spec.box_name], capture_output=True)  # a `docker run` that failed half-way
        box.volume_remove()
        subprocess.run(["docker", "rmi", bare], capture_output=True)


# ---------------------------------------------------------------- a changed list


def test_a_new_apt_list_rebuilds_on_the_host_and_recreates_the_box_keeping_data_key_and_job_logs(laptop):
    host, box = laptop.host1, f"devbox-{laptop.host1}"
    up(laptop, host)
    before = subprocess.run(["docker", "inspect", "-f", "{{.Id}} {{.Config.Image}}", box], capture_output=True, text=True).stdout.split()
    pinned = (laptop.home / ".ssh" / "devbox" / "known_hosts").read_text()
    assert laptop.ssh(box, "echo precious > /workspace/keep.txt").returncode == 0
    done = laptop.devbox("run", host, "--name", "hello", "--", "echo", "hello from the old box")
    assert done.returncode == 0, done.stderr
    wait_until(lambda: "exited 0" == jobs_of(laptop, host).get("hello", {}).get("state"), 15, "the job to end")
    set_config(laptop, tb.BASE_IMAGE, 'apt = ["jq"]\n')
    subprocess.run(["docker", "rmi", content_tag(ImageSpec(tb.BASE_IMAGE, apt=("jq",)))], capture_output=True)  # a crashed run's
    reports, _ = laptop.devbox.json("up", host, expect=None)
    after = subprocess.run(["docker", "inspect", "-f", "{{.Id}} {{.Config.Image}}", box], capture_output=True, text=True).stdout.split()
    try:
        report = reports[0]
        assert report["error"] == "" and report["delivery"] == "build-on-host", report
        assert any("re-create" in s for s in report["steps"]), report["steps"]
        assert after[0] != before[0] and after[1] != before[1]
        assert laptop.ssh(box, "jq --version").returncode == 0
        assert (laptop.home / ".ssh" / "devbox" / "known_hosts").read_text() == pinned
        assert laptop.ssh(box, "cat /workspace/keep.txt").stdout.strip() == "precious"
        assert "hello from the old box" in laptop.devbox("logs", host, "hello").stdout
    finally:  # the next run must build it again
        laptop.devbox("down", host)
        if len(after) == 2 and after[1] != before[1]:
            subprocess.run(["docker", "rmi", after[1]], capture_output=True)
