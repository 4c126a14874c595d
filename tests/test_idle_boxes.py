"""Idle boxes give their GPUs back (issue 20 item 5), end to end: `devbox up` of boxes with
`idle_stop`, their watcher stopping the idle one and not the one with a job or an SSH session,
`status` saying why, and `up` bringing a stopped box back; on the real bed."""
from __future__ import annotations

import json
import subprocess
import time

import pytest

import testbed as tb
from conftest import SUFFIX

IDLE, BUSY = f"idle{SUFFIX}", f"busy{SUFFIX}"


def state(name: str) -> dict:
    done = subprocess.run(["docker", "inspect", f"devbox-{name}"], capture_output=True, text=True)
    return json.loads(done.stdout)[0]["State"] if done.returncode == 0 else {}


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what} not seen within {timeout} s")


@pytest.fixture
def idle_boxes(laptop):
    assert laptop.devbox("keys", "add", "me", f"{laptop.identity}.pub").returncode == 0
    toml = laptop.work / "devbox.toml"
    toml.write_text('admins = ["me"]\n' + toml.read_text() + "".join(
        f'\n[boxes.{name}]\nhost = "{laptop.host1}"\nowner = "me"\nidle_stop = "8s"\n' for name in (IDLE, BUSY)))
    reports, _ = laptop.devbox.json("up", IDLE, BUSY, "--no-verify")
    assert [r["error"] for r in reports] == ["", ""], reports
    return laptop


def test_an_idle_box_stops_itself_and_one_with_a_job_or_a_session_does_not(idle_boxes):
    laptop = idle_boxes
    started = laptop.devbox("run", BUSY, "--name", "train", "--", "sleep", "600")
    assert started.returncode == 0, started.stderr
    session = subprocess.Popen(["ssh", "-F", str(laptop.ssh_config), f"devbox-{IDLE}", "sleep", "25"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        time.sleep(15)                     # almost two windows: the session keeps IDLE up
        assert state(IDLE)["Running"], "an open SSH session keeps the box up"
        rows, _ = laptop.devbox.json("status", laptop.host1)
        by_name = {r["host"]: r for r in rows}
        assert "1 ssh session" in by_name[IDLE]["kept_up_by"], by_name[IDLE]
        assert "job train running" in by_name[BUSY]["kept_up_by"], by_name[BUSY]
    finally:
        session.wait(timeout=60)
    stopped = wait_until(lambda: (s := state(IDLE)) and s["Status"] == "exited" and s, 40, "the idle box stopping")
    assert stopped["ExitCode"] == 0
    time.sleep(3)
    assert state(IDLE)["Status"] == "exited", "the restart policy does not bring an idle-stopped box back"
    assert state(BUSY)["Running"], "a running job keeps its box up"
    rows, _ = laptop.devbox.json("status", IDLE)
    assert rows[0]["state"] == "exited" and rows[0]["stopped_why"].startswith("idle 8s since "), rows[0]
    text = laptop.devbox("status", laptop.host1).stdout
    assert any(line.startswith(IDLE) and "idle 8s since" in line for line in text.splitlines()), text
    back, _ = laptop.devbox.json("up", IDLE, "--no-verify")
    assert back[0]["error"] == "" and state(IDLE)["Running"]
    assert "start the stopped box" in " ".join(back[0]["steps"])
    assert laptop.ssh(f"devbox-{IDLE}", "true").returncode == 0


def test_idle_stop_is_validated_and_changes_only_boxes_that_set_it(laptop):
    for bad in ('"0s"', '"2 h"', '"31d"', "7200", '"-1h"', '""'):
        (laptop.work / "devbox.toml").write_text(f'[hosts.{laptop.host1}]\nidle_stop = {bad}\n')
        done = laptop.devbox("up", laptop.host1, "--dry-run")
        assert done.returncode == 2 and "idle_stop" in done.stderr and len(done.stderr.splitlines()) == 1, (bad, done.stderr)
    from devbox.config import BoxSpec
    plain = BoxSpec("gpu-host-3")
    assert BoxSpec("gpu-host-3", idle_stop=60).spec_hash(20000, "t") != plain.spec_hash(20000, "t")
    (laptop.work / "devbox.toml").write_text(f'[hosts.{laptop.host1}]\nidle_stop = "2h"\nplaybook = "cpu"\nbase_image = "{tb.BASE_IMAGE}"\n')
    dry = laptop.devbox("up", laptop.host1, "--dry-run")
    assert "--restart on-failure" in dry.stdout and "DEVBOX_IDLE_STOP=7200" in dry.stdout
