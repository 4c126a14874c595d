"""Issue 20 item 5 on the bed: a box started with DEVBOX_IDLE_STOP stops itself when idle.

Boxes run from the built image with devbox's own run arguments (plan.run_args) plus
`--restart on-failure` and the idle env; windows are a few seconds to keep this quick.
"""
from __future__ import annotations

import json
import subprocess
import time

import pytest

from conftest import SUFFIX
from devbox.idle import IdleState, stopped_reason
from test_image import RunningBox

WINDOW = 8   # seconds: sampled every 1 s; long enough to connect before an untouched box stops
STATE = "/home/dev/.devbox/idle/state"
STOPPED = "/home/dev/.devbox/idle/stopped"
FAKE_SMI = """#!/bin/sh
# Test stand-in for nvidia-smi: answers only the watcher's query, from a file the test writes.
[ "$*" = "--query-gpu=index,utilization.gpu --format=csv,noheader,nounits" ] || exit 9
cat /opt/fake-gpu/util
"""


def docker(*args: str, check: bool = True) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check).stdout


def container_state(box: RunningBox) -> dict:
    inspect = json.loads(docker("inspect", box.id))[0]
    return inspect["State"] | {"RestartCount": inspect["RestartCount"]}


def logs(box: RunningBox) -> str:
    """stdout and stderr in one stream, in order (`docker logs NAME 2>&1`, as status reads them)."""
    return subprocess.run(["docker", "logs", box.id], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout


def idle_state(box: RunningBox) -> IdleState:
    return IdleState.parse(docker("exec", box.id, "cat", STATE))


def wait_for(what: str, condition, timeout: float, box: RunningBox):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if value := condition():
                return value
        except (subprocess.CalledProcessError, ValueError):   # not written yet, or the box just went
            pass
        time.sleep(0.3)
    raise AssertionError(f"{what} not seen within {timeout} s; logs:\n{logs(box)}")


def wait_stopped(box: RunningBox, timeout: float = WINDOW + 20) -> dict:
    return wait_for("the box stopping", lambda: (s := container_state(box))["Status"] == "exited" and s, timeout, box)


def still_up_after_the_window(box: RunningBox) -> IdleState:
    """Sleep past a whole window and prove the box ran all along and the watcher saw activity."""
    time.sleep(WINDOW + 3)
    state = container_state(box)
    assert state["Status"] == "running" and state["RestartCount"] == 0, logs(box)
    sample = idle_state(box)
    assert sample.idle_since is None and sample.window == WINDOW and time.time() - sample.updated < 5
    return sample


@pytest.fixture
def idle_box(box_image, tmp_path):
    """Start boxes with the idle watcher on: idle_box(*env) -> RunningBox (removed afterwards)."""
    started = []

    def start(*env: str, extra: tuple[str, ...] = ()) -> RunningBox:
        args = ("--restart", "on-failure", *(a for e in env for a in ("-e", e)), *extra)
        box = RunningBox(box_image.tag, f"idle-{tmp_path.name[-12:]}{SUFFIX}", tmp_path, extra=args)
        started.append(box)
        return box.start()

    yield start
    for box in started:
        box.remove()
        box.volume_remove()


def ssh_session(box: RunningBox, tmp_path) -> subprocess.Popen:
    """A real OpenSSH client holding a session open (-N: a tunnel, as VS Code keeps one)."""
    argv = ["ssh", "-F", "/dev/null", "-p", str(box.port), "-i", str(box.key), "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={box.known_hosts(tmp_path / 'kh')}",
            "-N", "dev@127.0.0.1"]
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_an_idle_box_stops_itself_with_exit_0_stays_stopped_and_says_why(idle_box, tmp_path):
    box = idle_box(f"DEVBOX_IDLE_STOP={WINDOW}")
    started = time.time()
    first = idle_state(box)
    assert (first.window, first.threshold, first.ssh_sessions, first.jobs, first.gpu_util) == (WINDOW, 5, 0, (), ())
    assert first.idle_since is not None and abs(first.idle_since - started) < 5 and first.reasons() == []
    state = wait_stopped(box)
    assert state["ExitCode"] == 0 and not state["OOMKilled"]
    took = time.time() - started
    assert WINDOW - 1 <= took <= WINDOW + 15, took
    time.sleep(3)   # on-failure would have started it again by now if the exit were a failure
    again = container_state(box)
    assert again["Status"] == "exited" and again["RestartCount"] == 0
    reason = stopped_reason(logs(box))
    assert reason and reason.startswith(f"idle {WINDOW}s since ") and reason.endswith("(no ssh session, no job)"), logs(box)
    since = reason.split()[3]
    assert time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(first.idle_since)) == since
    written = docker("cp", f"{box.id}:{STOPPED}", "-")   # a tar of the one file, from the stopped box's volume
    assert f"devbox-idle: stopped {reason}\n" in written

    docker("start", box.id)   # `up` starting it again: the old reason goes, a new run begins
    wait_for("the restarted watcher's sample", lambda: idle_state(box).updated >= time.time() - 3, 20, box)
    assert subprocess.run(["docker", "exec", box.id, "test", "-e", STOPPED]).returncode == 1
    assert stopped_reason(logs(box)) is None


def test_an_open_ssh_session_keeps_the_box_up_and_closing_it_lets_it_stop(idle_box, tmp_path):
    box = idle_box(f"DEVBOX_IDLE_STOP={WINDOW}")
    session = ssh_session(box, tmp_path)
    try:
        wait_for("the session in the state file", lambda: idle_state(box).ssh_sessions == 1, WINDOW - 2, box)
        assert still_up_after_the_window(box).reasons() == ["1 ssh session"]
    finally:
        session.terminate()
        session.wait(10)
    closed = time.time()
    assert wait_stopped(box)["ExitCode"] == 0
    assert time.time() - closed >= WINDOW - 1
    assert "(no ssh session, no job)" in stopped_reason(logs(box))


def test_a_running_tmux_job_keeps_the_box_up_until_it_ends(idle_box, tmp_path):
    box = idle_box(f"DEVBOX_IDLE_STOP={WINDOW}")
    started = box.openssh(tmp_path, "tmux new-session -d -s train 'sleep 600' && tmux new-session -d -s 'eval,2' 'sleep 600'")
    assert started.returncode == 0, started.stderr
    wait_for("the jobs in the state file", lambda: idle_state(box).jobs == ("eval_2", "train"), WINDOW - 2, box)
    assert still_up_after_the_window(box).reasons() == ["job eval_2 running", "job train running"]
    docker("exec", box.id, "tmux", "kill-server")
    assert wait_stopped(box)["ExitCode"] == 0


def test_a_busy_gpu_keeps_the_box_up_and_one_under_the_threshold_does_not(idle_box, tmp_path):
    fake = tmp_path / "fake-gpu"
    fake.mkdir(mode=0o755)
    (fake / "nvidia-smi").write_text(FAKE_SMI)
    (fake / "nvidia-smi").chmod(0o755)
    (fake / "util").write_text("0, 87\n1, 3\n")
    (fake / "util").chmod(0o644)
    box = idle_box(f"DEVBOX_IDLE_STOP={WINDOW}", "DEVBOX_IDLE_GPU_UTIL=50",
                   extra=("--mount", f"type=bind,source={fake},target=/opt/fake-gpu,readonly",
                          "--mount", f"type=bind,source={fake / 'nvidia-smi'},target=/usr/local/bin/nvidia-smi,readonly"))
    wait_for("the GPUs in the state file", lambda: idle_state(box).gpu_util == ((0, 87), (1, 3)), WINDOW - 2, box)
    sample = still_up_after_the_window(box)
    assert sample.threshold == 50 and sample.reasons() == ["GPU 0 at 87 %"]
    (fake / "util").write_text("0, 49\n1, [N/A]\n")
    wait_for("the new reading", lambda: idle_state(box).gpu_util == ((0, 49),), 5, box)
    assert wait_stopped(box)["ExitCode"] == 0
    assert stopped_reason(logs(box)).endswith("(no ssh session, no job, GPUs under 50%)")


def test_loopback_connections_like_the_health_check_do_not_count(idle_box, tmp_path):
    box = idle_box(f"DEVBOX_IDLE_STOP={WINDOW}")
    # Held open from inside over 127.0.0.1 (sshd waits LoginGraceTime for it), and the
    # health check's own banner read, over and over.
    docker("exec", "--detach", box.id, "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/2222; sleep 60")
    docker("exec", "--detach", box.id, "sh", "-c", "while :; do devbox-health --banner; sleep 0.5; done")
    established = wait_for("the loopback connection", lambda: [
        line for line in docker("exec", box.id, "cat", "/proc/net/tcp").splitlines()
        if line.split()[3] == "01" and line.split()[1].endswith(":08AE")], 5, box)
    assert all(line.split()[2].startswith("0100007F") for line in established), established
    seen = time.time()
    assert wait_for("a sample taken since", lambda: (s := idle_state(box)).updated > seen and s, 5, box).ssh_sessions == 0
    assert wait_stopped(box)["ExitCode"] == 0


def test_docker_stop_still_stops_a_watched_box_promptly_and_the_watcher_has_no_privilege(idle_box, tmp_path):
    box = idle_box("DEVBOX_IDLE_STOP=3600")   # the watcher sleeps 60 s between samples
    session = ssh_session(box, tmp_path)
    try:
        wait_for("the watcher's first sample", lambda: idle_state(box), 10, box)
        top = docker("top", box.id, "-o", "pid,uid,cmd").splitlines()[1:]
        assert all(line.split()[1] == "1000" for line in top), top   # the watcher adds no user, no capability
        watcher = next(line.split()[0] for line in top if "devbox-idle-watch" in line)
        status = open(f"/proc/{watcher}/status").read()
        assert "CapEff:\t0000000000000000" in status and "CapPrm:\t0000000000000000" in status and "NoNewPrivs:\t1" in status
        started = time.monotonic()
        docker("stop", box.id)
        took = time.monotonic() - started
    finally:
        session.terminate()
        session.wait(10)
    state = container_state(box)
    assert took < 10 and state["Status"] == "exited" and state["ExitCode"] == 0, (took, state)
    assert stopped_reason(logs(box)) is None and "Received signal 15; terminating." in logs(box)


def test_a_crashed_sshd_exits_non_zero_and_on_failure_brings_the_box_back(idle_box, tmp_path):
    box = idle_box("DEVBOX_IDLE_STOP=3600")
    since = str(int(time.time()) - 1)
    listener = next(line.split()[0] for line in docker("top", box.id, "-o", "pid,cmd").splitlines() if "[listener]" in line)
    subprocess.run(["kill", "-KILL", listener], check=True)
    wait_for("the restart", lambda: (s := container_state(box))["RestartCount"] == 1 and s["Running"], 20, box)
    back = time.time()
    died = docker("events", "--since", since, "--until", str(int(time.time()) + 1), "--filter", f"container={box.id}",
                  "--filter", "event=die", "--format", "{{.Actor.Attributes.exitCode}}").split()
    assert died == ["137"]
    wait_for("a login to the restarted box", lambda: box.openssh(tmp_path, "true").returncode == 0, 20, box)
    assert wait_for("a fresh watcher", lambda: idle_state(box).updated >= int(back) - 1, 10, box)
    assert sum("devbox-idle-watch" in line for line in docker("top", box.id).splitlines()) == 1


@pytest.mark.parametrize("env, note", [
    ((), None), (("DEVBOX_IDLE_STOP=0",), None),
    (("DEVBOX_IDLE_STOP=2h",), "devbox-idle: DEVBOX_IDLE_STOP=2h DEVBOX_IDLE_GPU_UTIL=: want whole seconds"),
    (("DEVBOX_IDLE_STOP=20", "DEVBOX_IDLE_GPU_UTIL=101"), "idle stop is off"),
])
def test_without_a_valid_idle_stop_sshd_is_the_box_itself_and_nothing_watches(idle_box, env, note):
    box = idle_box(*env)
    top = docker("top", box.id, "-o", "pid,ppid,cmd").splitlines()[1:]
    init = next(line.split()[0] for line in top if "docker-init" in line)
    children = [line.split(None, 2)[2] for line in top if line.split()[1] == init]
    assert len(children) == 1 and children[0].startswith("sshd: /usr/sbin/sshd -D -e"), top   # exec'd: no shell left
    assert not any("devbox-idle-watch" in line for line in top)
    assert subprocess.run(["docker", "exec", box.id, "test", "-e", STATE]).returncode == 1
    assert (note in logs(box)) if note else "devbox-idle" not in logs(box)


def test_a_hangup_reloads_sshd_as_before_and_the_box_keeps_running(idle_box, tmp_path):
    box = idle_box("DEVBOX_IDLE_STOP=3600")
    docker("kill", "--signal", "HUP", box.id)
    time.sleep(1)
    wait_for("a login after the reload", lambda: box.openssh(tmp_path, "true").returncode == 0, 20, box)
    state = container_state(box)
    assert state["Running"] and state["RestartCount"] == 0
    assert "Received SIGHUP; restarting." in logs(box)
