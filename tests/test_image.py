"""The box image, run with the product's own hardening, attacked over real SSH."""
from __future__ import annotations

import json
import os
import socket
import sys
import subprocess
import threading
import time

import paramiko
import pytest

import testbed as tb
from conftest import SUFFIX
from devbox.box import keys_writer_argv
from devbox.config import BoxSpec
from devbox.image import ImageSpec, build_locally, content_tag
from devbox.plan import run_args


VENV_ENV = {**os.environ, "PATH": f"{sys.prefix}/bin:{os.environ['PATH']}"}  # devbox, ssh-audit


class RunningBox:
    """A box started with `docker run` and plan.run_args (what `devbox up` runs)."""

    def __init__(self, image: str, name: str, workdir, uid: int = 1000, gid: int = 1000, extra: tuple[str, ...] = ()):
        self.spec = BoxSpec(name, gpus="none", uid=uid, gid=gid, base_image=tb.BASE_IMAGE,
                            volumes=())
        self.port = tb.free_port("127.0.0.1")
        self.workspace = workdir / "workspace"
        self.workspace.mkdir(mode=0o777, exist_ok=True)
        self.workspace.chmod(0o777)
        self.image = image
        self.id = None
        self.extra = list(extra)   # more `docker run` arguments (env, mounts), placed after devbox's own
        self.key = tb.keygen(workdir / "user_key", "tester")
        self.other_key = tb.keygen(workdir / "stranger_key", "stranger")

    def start(self) -> "RunningBox":
        subprocess.run(["docker", "network", "create", self.spec.network], capture_output=True)
        pub = (self.key.parent / (self.key.name + ".pub")).read_text()
        subprocess.run(["docker", *keys_writer_argv(self.spec, self.image)], input=pub, text=True, check=True)
        engine = tb.local_facts(self.spec, ["memlock"])   # as `up`'s host check reads it: memlock=-1 fails here
        args = run_args(self.spec, engine, self.port, self.image, {"devbox.test": "image"})
        args = args[:-1] + ["--mount", f"type=bind,source={self.workspace},target=/workspace", *self.extra, self.image]
        done = subprocess.run(["docker", *args], capture_output=True, text=True)
        if done.returncode != 0:   # created but not started: remove it (and the rest) before failing
            subprocess.run(["docker", "rm", "-f", self.spec.box_name], capture_output=True)
            self.volume_remove()
            raise AssertionError(f"docker run failed: {done.stderr.strip()}")
        self.id = done.stdout.strip()
        self.host_key = self.wait_host_key()
        return self

    def wait_host_key(self) -> str:
        for _ in range(100):
            done = subprocess.run(["docker", "exec", self.id, "cat", f"{self.spec.home}/.devbox/hostkeys/ssh_host_ed25519_key.pub"],
                                  capture_output=True, text=True)
            if done.returncode == 0:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return " ".join(done.stdout.split()[:2])
                except OSError:
                    pass
            time.sleep(0.1)
        raise AssertionError("box never came up: " + subprocess.run(["docker", "logs", self.id], capture_output=True, text=True).stderr)

    def remove(self) -> None:
        if self.id:
            subprocess.run(["docker", "rm", "-f", self.id], capture_output=True)
            self.id = None

    def volume_remove(self) -> None:
        subprocess.run(["docker", "volume", "rm", "-f", self.spec.volume_name(self.spec.all_volumes()[0]), self.spec.keys_volume,
                        self.spec.secrets_volume],
                       capture_output=True)
        subprocess.run(["docker", "network", "rm", self.spec.network], capture_output=True)

    def known_hosts(self, path) -> str:
        path.write_text(f"[127.0.0.1]:{self.port} {self.host_key}\n")
        return str(path)

    def openssh(self, workdir, *command, key=None, user="dev", extra=()):
        argv = ["ssh", "-F", "/dev/null", "-p", str(self.port), "-i", str(key or self.key), "-o", "IdentitiesOnly=yes",
                "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={self.known_hosts(workdir / 'kh')}",
                *extra, f"{user}@127.0.0.1", *command]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)

    def transport(self) -> paramiko.Transport:
        t = paramiko.Transport(("127.0.0.1", self.port))
        t.start_client(timeout=10)
        key = t.get_remote_server_key()
        assert f"{key.get_name()} {key.get_base64()}" == self.host_key
        return t

    def paramiko_run(self, command: str) -> str:
        t = self.transport()
        t.auth_publickey("dev", paramiko.Ed25519Key.from_private_key_file(str(self.key)))
        chan = t.open_session()
        chan.exec_command(command)
        out = chan.makefile().read().decode()
        t.close()
        return out


@pytest.fixture
def box(box_image, tmp_path):
    running = RunningBox(box_image.tag, f"imgtest-{tmp_path.name[-12:]}{SUFFIX}", tmp_path).start()
    yield running
    running.remove()
    running.volume_remove()


def test_devbox_build_twice_gives_the_same_tag_and_reuses_it(box_image):
    again = build_locally(ImageSpec(tb.BASE_IMAGE))
    assert again.tag == box_image.tag == content_tag(ImageSpec(tb.BASE_IMAGE))
    assert again.built is False
    assert content_tag(ImageSpec(tb.BASE_IMAGE, uid=1234)) != box_image.tag


def test_build_cli_json_says_reused(testbed, box_image, tmp_path):
    done = subprocess.run(["devbox", "build", "--base", tb.BASE_IMAGE, "--json"], capture_output=True, text=True, cwd=tmp_path,
                          env=VENV_ENV)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["built"] is False


def test_a_refresh_label_reruns_the_package_step_with_the_label_in_its_cache_key(box_image, tmp_path):
    fresh = build_locally(ImageSpec(tb.BASE_IMAGE, refresh="t-refresh-test"))
    try:
        assert fresh.built and fresh.tag != box_image.tag
        history = subprocess.run(["docker", "history", "--no-trunc", "--format", "{{.CreatedBy}}", fresh.tag],
                                 capture_output=True, text=True, check=True).stdout
        apt_step = next(line for line in history.splitlines() if "apt-get install" in line)
        assert "DEVBOX_REFRESH=t-refresh-test" in apt_step, apt_step
    finally:
        subprocess.run(["docker", "rmi", fresh.tag], capture_output=True)
    bad = subprocess.run(["devbox", "build", "--refresh", "a b"], capture_output=True, text=True, cwd=tmp_path, env=VENV_ENV)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--refresh" in bad.stderr


def test_missing_base_is_a_one_line_error_with_remedy(testbed, tmp_path):
    done = subprocess.run(["devbox", "build", "--base", "local/does-not-exist:1"], capture_output=True, text=True, cwd=tmp_path,
                          env=VENV_ENV)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--base" in done.stderr


def test_authorized_key_logs_in_with_openssh_and_paramiko(box, tmp_path):
    assert box.openssh(tmp_path, "id -un").stdout.strip() == "dev"
    assert box.paramiko_run("id -un").strip() == "dev"


def test_password_keyboard_interactive_root_and_unknown_key_are_refused(box, tmp_path):
    t = box.transport()
    with pytest.raises(paramiko.BadAuthenticationType) as offered:
        t.auth_none("dev")
    assert list(offered.value.allowed_types) == ["publickey"]
    t.close()
    for attempt in (lambda t: t.auth_password("dev", "dev"),
                    lambda t: t.auth_interactive("dev", lambda *a: ["dev"] * len(a[2])),
                    lambda t: t.auth_publickey("root", paramiko.Ed25519Key.from_private_key_file(str(box.key))),
                    lambda t: t.auth_publickey("dev", paramiko.Ed25519Key.from_private_key_file(str(box.other_key)))):
        t = box.transport()
        with pytest.raises((paramiko.AuthenticationException, paramiko.SSHException)):
            attempt(t)
        assert not t.is_authenticated()
        t.close()
    assert box.openssh(tmp_path, "true", key=box.other_key).returncode == 255
    assert box.openssh(tmp_path, "true", user="root").returncode == 255


def test_no_process_is_root_and_login_shell_has_no_capabilities(box, tmp_path):
    out = box.openssh(tmp_path, "grep -h '^Uid:' /proc/[0-9]*/status; grep -E '^(CapEff|CapPrm|NoNewPrivs):' /proc/self/status").stdout
    uids = [line.split()[1:] for line in out.splitlines() if line.startswith("Uid:")]
    assert uids and all(u == ["1000"] * 4 for u in uids)
    assert "CapEff:\t0000000000000000" in out and "CapPrm:\t0000000000000000" in out
    assert "NoNewPrivs:\t1" in out
    inspect = json.loads(subprocess.run(["docker", "inspect", box.id], capture_output=True, text=True).stdout)[0]
    top = subprocess.run(["docker", "top", box.id, "-o", "uid,cmd"], capture_output=True, text=True).stdout
    assert all(line.split()[0] == "1000" for line in top.splitlines()[1:])
    assert inspect["HostConfig"]["ReadonlyRootfs"] and inspect["HostConfig"]["CapDrop"] == ["ALL"]
    assert inspect["NetworkSettings"]["Ports"]["2222/tcp"][0]["HostIp"] == "127.0.0.1"


def test_ssh_audit_reports_no_fail_and_only_post_quantum_warnings(box, tmp_path):
    audit = tb.ssh_audit(box.port)
    assert audit["fail"] == []
    assert audit["cves"] == []
    assert all(name.startswith("curve25519") and "post-quantum" in note for name, note in audit["warn"]), audit["warn"]
    (tmp_path / "ssh-audit.json").write_text(audit["raw"])


def test_host_key_is_the_same_after_the_container_is_recreated(box, tmp_path):
    before = box.host_key
    box.remove()
    box.start()
    assert box.host_key == before
    assert box.openssh(tmp_path, "true").returncode == 0


def test_detached_tmux_session_outlives_the_ssh_session(box, tmp_path):
    assert box.openssh(tmp_path, "tmux new-session -d -s keep 'sleep 300'").returncode == 0
    time.sleep(0.5)
    assert box.openssh(tmp_path, "tmux has-session -t =keep && echo alive").stdout.strip() == "alive"


def test_workspace_is_writable_and_files_belong_to_the_configured_uid(box_image, tmp_path):
    custom = build_locally(ImageSpec(tb.BASE_IMAGE, uid=1234, gid=2345))
    running = RunningBox(custom.tag, f"imguid-{tmp_path.name[-12:]}{SUFFIX}", tmp_path, uid=1234, gid=2345).start()
    try:
        done = running.openssh(tmp_path, "touch /workspace/made-in-box && id -u && id -g")
        assert done.stdout.split() == ["1234", "2345"], done.stderr
        stat = (running.workspace / "made-in-box").stat()
        assert (stat.st_uid, stat.st_gid) == (1234, 2345)
    finally:
        running.remove()
        running.volume_remove()


def test_login_waits_for_a_box_whose_sshd_does_not_answer_yet(box):
    """Right after `docker run` the port proxy accepts and hangs up until sshd listens."""
    from devbox.errors import HostUnreachable
    from devbox.verify import BoxSession

    hang_up = socket.create_server(("127.0.0.1", 0))

    def accept_and_hang_up():
        try:
            while True:
                hang_up.accept()[0].close()
        except OSError:  # the listener was closed: the test is over
            pass

    threading.Thread(target=accept_and_hang_up, daemon=True).start()
    attempts = []

    def connect():
        attempts.append(1)
        port = hang_up.getsockname()[1] if len(attempts) <= 2 else box.port
        return socket.create_connection(("127.0.0.1", port))

    key = [paramiko.Ed25519Key.from_private_key_file(str(box.key))]
    session = BoxSession(connect, box.host_key, "dev", key, "devbox-test")
    session.login(wait_s=20)
    assert session.run("id -un")[1].strip() == "dev" and len(attempts) == 3
    session.close()
    never = BoxSession(lambda: socket.create_connection(hang_up.getsockname()), box.host_key, "dev", key, "devbox-test")
    with pytest.raises(HostUnreachable, match="did not answer within 1 s"):
        never.login(wait_s=1)
    hang_up.close()
