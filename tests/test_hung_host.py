"""A host whose nvidia-smi hangs (issue 23.2), on the real bed: the hung question ends on its
own timeout naming the command, the healthy hosts' rows come out first, and nothing devbox
started on the hung host is left running."""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from devbox.config import BoxSpec
from devbox.facts import MARK, gpu_script, state_script

QUESTION_TIMEOUT = "3"


@contextmanager
def hung_driver(testbed, host: str):
    """The host's nvidia-smi sleeps; yields the sleep's unique argv, to look for it after."""
    seconds = str(86000 + secrets.randbelow(999))
    override = testbed.workdir / host / "nvidia-smi-override"
    override.write_text(f"#!/bin/sh\nexec sleep {seconds}\n")
    override.chmod(0o755)
    try:
        yield f"sleep\x00{seconds}\x00".encode()
    finally:
        override.unlink()


def left_running(argv: bytes) -> list[int]:
    """PIDs whose command line is argv (a zombie awaiting its reaper has an empty one)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes() == argv:
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def gpu_toml(laptop) -> None:
    (laptop.work / "devbox.toml").write_text(
        f'[defaults]\nplaybook = "cpu"\nbase_image = "local/debian:bookworm"\n'
        f'[hosts.{laptop.noruntime}]\ngpus = "all"\nbase_image = "auto"\n')


def devbox_lines(laptop, *args: str) -> tuple[list[tuple[float, str]], int, str]:
    """Run devbox, noting when each stdout line came out; (lines, exit code, stderr)."""
    env = {**laptop.devbox.env, "DEVBOX_QUESTION_TIMEOUT": QUESTION_TIMEOUT}
    began = time.monotonic()
    # `timeout 60`: today's main waits 600 s for the hung nvidia-smi
    process = subprocess.Popen(["timeout", "60", sys.executable, "-m", "devbox.cli", *args], cwd=laptop.work, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines = [(time.monotonic() - began, line.rstrip("\n")) for line in process.stdout]
    process.wait(timeout=10)
    return lines, process.returncode, process.stderr.read()


def test_status_over_a_healthy_and_a_hung_host_ends_on_the_question_timeout(laptop, testbed):
    gpu_toml(laptop)
    with hung_driver(testbed, laptop.noruntime) as sleeper:
        lines, code, err = devbox_lines(laptop, "status", laptop.noruntime, laptop.host1)
        assert code == 3, (lines, err)
        texts = [text for _, text in lines]
        hung = next(i for i, t in enumerate(texts) if t.startswith(laptop.noruntime))
        healthy = next(i for i, t in enumerate(texts) if t.startswith(laptop.host1))
        assert healthy < hung, f"the healthy host's row comes out first, whatever the order asked: {texts}"
        assert "absent" in texts[healthy]
        assert "`nvidia-smi --query-gpu=" in texts[hung] and f"no answer within {QUESTION_TIMEOUT} s" in texts[hung], texts[hung]
        assert "Traceback" not in err
        assert left_running(sleeper) == [], "the hung nvidia-smi was ended with the question"


def test_top_once_and_a_dry_run_up_name_the_hung_command(laptop, testbed):
    gpu_toml(laptop)
    with hung_driver(testbed, laptop.noruntime) as sleeper:
        lines, code, err = devbox_lines(laptop, "top", laptop.noruntime, laptop.host1, "--once")
        texts = [text for _, text in lines]
        assert code == 3 and texts[0].startswith("HOST"), (texts, err)
        assert texts[1].startswith(laptop.host1), "the host that answered comes out first"
        assert "`nvidia-smi -q -x` gave no answer within 3 s" in texts[2], texts
        lines, code, err = devbox_lines(laptop, "up", laptop.noruntime, "--dry-run")
        assert code == 3 and "`nvidia-smi --query-gpu=" in lines[-1][1], (lines, err)
        assert left_running(sleeper) == []


def test_the_hung_question_is_named_from_what_the_script_printed_before():
    from devbox.facts import hung_command

    spec = BoxSpec("h")
    script = state_script(spec, "tag")
    assert hung_command(script, f"\n{MARK} docker\n28.0\n{MARK} images\n\n{MARK} owner\n\n{MARK} box\n")[1] \
        == "docker container inspect devbox-h"
    assert hung_command(script, f"{MARK} path\n\n{MARK} exec\n") == ("exec", "docker exec into the box")
    assert hung_command(gpu_script(spec), "") == ("", "the first question")


def test_a_bad_question_timeout_is_a_config_error(laptop):
    env = {**laptop.devbox.env, "DEVBOX_QUESTION_TIMEOUT": "soon"}
    done = subprocess.run([sys.executable, "-m", "devbox.cli", "status", laptop.host1], cwd=laptop.work, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "DEVBOX_QUESTION_TIMEOUT='soon'" in done.stdout + done.stderr


def test_live_top_refreshes_the_answering_host_while_another_hangs(laptop, testbed, monkeypatch):
    import threading

    from devbox.commands.top import top_live
    from devbox.config import load_specs

    gpu_toml(laptop)
    monkeypatch.setenv("DEVBOX_QUESTION_TIMEOUT", "20")
    frames: list[str] = []
    with hung_driver(testbed, laptop.noruntime) as sleeper:
        specs = load_specs([laptop.noruntime, laptop.host1])
        live = threading.Thread(target=top_live, args=(specs, 0.5, frames.append), kwargs={"rounds": 3}, daemon=True)
        live.start()
        live.join(timeout=15)   # today's main draws its first frame after the hung host's 600 s
        assert not live.is_alive(), f"three frames within 15 s; got {len(frames)}"
        assert all(f"{laptop.noruntime:<16} waiting for its first answer" in frame for frame in frames), frames[-1]
        assert all(f"\n{laptop.host1}" in frame for frame in frames), "the host that answers has its row in every frame"
        for _ in range(20):             # leaving closed the connection; the host's timeout is not needed
            if not left_running(sleeper):
                break
            time.sleep(0.25)
        assert left_running(sleeper) == []
