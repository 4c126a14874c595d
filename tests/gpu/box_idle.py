"""The idle rule on a real GPU (issue 24 item 2): the box's own watcher (images/ssh/idle-watch.sh)
sees the GPU busy while a torch matmul loop runs in the box and idle after it, and the box then
stops itself: its init exits 0 within the window and a few samples, and says why.

box_gpu.py runs these checks after verify when devbox.toml sets `idle_stop`
(tests/gpu/box-device-idle.toml). The loop is a `runc exec` as the box's user (what `docker exec`
starts): neither an SSH session nor a tmux job, so only the GPU keeps the box up while it runs. The
watcher's state file is read from the home volume's folder on this machine (what `cat` in the box
would read), so watching opens no session of its own. The init's exit code is known because
box_gpu.py made itself the box's subreaper (containerd's shim plays that part under Docker).
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from devbox.idle import STOPPED_PREFIX, IdleState, stopped_reason
from devbox.verify import FAIL, OK, SKIPPED, Check

PYTHON = "/opt/devbox/venv/bin/python3"
POLL = 0.25
# Prints "busy EPOCH" once the GPU works, "done EPOCH N" at the end; 3 without CUDA.
LOOP = """
import sys, time
try:
    import torch
    cuda = torch.cuda.is_available()
except ImportError:
    cuda = False
if not cuda:
    print("no cuda", flush=True)
    sys.exit(3)
a = torch.randn(8192, 8192, device="cuda")
b = a @ a
torch.cuda.synchronize()
print("busy", time.time(), flush=True)
end, n = time.time() + float(sys.argv[1]), 0
while time.time() < end:
    for _ in range(10):
        b = a @ a
    torch.cuda.synchronize()
    n += 10
print("done", time.time(), n, flush=True)
"""


def read_state(path: Path) -> IdleState | None:
    try:
        return IdleState.parse(path.read_text())
    except (OSError, ValueError):   # not written yet, or being replaced (mv is atomic, the read may race)
        return None


class Box:
    """The running box as these checks see it: its state file, its init, its runc name."""

    def __init__(self, name: str, runc: str, home: Path, pid: int):
        self.name, self.runc, self.pid = name, runc, pid
        self.state_path, self.stopped_path = home / ".devbox/idle/state", home / ".devbox/idle/stopped"
        self.samples: list[tuple[float, IdleState]] = []   # (when read here, the sample)
        self.exit_code: int | None = None
        self.exited_at: float | None = None

    def sample(self) -> None:
        """Keep each new sample of the watcher (one per `updated` change) and print it for the log."""
        state = read_state(self.state_path)
        if state and (not self.samples or self.samples[-1][1] != state):
            self.samples.append((time.time(), state))
            gpus = ",".join(f"{i}:{p}" for i, p in state.gpu_util) or "-"
            print(f"  idle state {time.strftime('%H:%M:%S', time.gmtime(state.updated))}: ssh_sessions={state.ssh_sessions} "
                  f"jobs={','.join(state.jobs) or '-'} gpu_util={gpus} idle_since={state.idle_since or ''}", flush=True)

    def running(self) -> bool:
        """False once the init has exited (its code kept: we are its subreaper)."""
        if self.exit_code is not None:
            return False
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:   # not our child: the code is unknown, only that it is gone
            if os.path.exists(f"/proc/{self.pid}"):
                return True
            self.exit_code, self.exited_at = -1, time.time()
            return False
        if pid == 0:
            return True
        self.exit_code, self.exited_at = os.waitstatus_to_exitcode(status), time.time()
        return False

    def watch(self, until, deadline: float) -> None:
        while not until() and time.time() < deadline:
            self.sample()
            time.sleep(POLL)
        self.sample()

    def runc_status(self) -> str:
        done = subprocess.run([self.runc, "state", self.name], capture_output=True, text=True)
        return json.loads(done.stdout).get("status", "?") if done.returncode == 0 else done.stderr.strip()[-200:]


def idle_checks(host, spec, port, name, runc, *, home: Path, box_log: Path, pid: int) -> list[Check]:
    """EXTRA_CHECKS entry (box_gpu.py binds home, box_log and the init's pid)."""
    window, threshold = spec.idle_stop, spec.idle_gpu_util
    interval = min(60, max(1, window // 10))   # the watcher's own rule
    box = Box(name, runc, home, pid)
    box.watch(lambda: bool(box.samples), time.time() + 3 * interval + 5)
    if not box.samples:
        return [Check("idle: watcher", FAIL, f"no state file {box.state_path} after {3 * interval + 5} s")]
    first = box.samples[-1][1]
    checks = [Check("idle: watcher", OK if (first.window, first.threshold) == (window, threshold) else FAIL,
                    f"window {first.window} s, threshold {first.threshold} %, a sample every {interval} s")]
    if first.gpu_util:
        busy, loop_end = run_loop(box, 2 * window, threshold, interval)
        checks.append(busy)
        start = "the loop's end"
    else:
        checks.append(Check("idle: GPU busy under a matmul loop", SKIPPED, "nvidia-smi lists no GPU in the box"))
        loop_end, start = time.time(), "these checks' start (no loop: no GPU)"
    limit = window + 4 * interval   # idle_since lags the loop's end by a sample or two, the stop by one
    box.watch(lambda: not box.running(), loop_end + limit + 10)
    return checks + [idle_after(box, loop_end, start), stopped(box, loop_end, start, window, limit), stop_line(box, box_log)]


def run_loop(box: Box, seconds: int, threshold: int, interval: int) -> tuple[Check, float]:
    """The loop in the box as its user; samples taken while the GPU works (after its first
    sample period) must all show it at or above the threshold and no idle_since."""
    name = "idle: GPU busy under a matmul loop"
    loop = subprocess.Popen([box.runc, "exec", box.name, PYTHON, "-c", LOOP, str(seconds)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    box.watch(lambda: loop.poll() is not None, time.time() + seconds + 120)
    if loop.poll() is None:
        loop.kill()
    loop_end = time.time()
    out = loop.communicate()[0]
    print("  loop:", out.strip()[-500:], flush=True)
    words = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.split()}
    if loop.returncode != 0 or "busy" not in words or "done" not in words:
        return Check(name, FAIL, f"the loop ended with {loop.returncode}: {out.strip()[-300:]}"), loop_end
    started, ended, matmuls = float(words["busy"][0]), float(words["done"][0]), int(words["done"][1])
    steady = [s for t, s in box.samples if started + interval + 1 <= s.updated <= ended]
    utils = [max(p for _, p in s.gpu_util) for s in steady if s.gpu_util]
    kept_by_gpu = steady and len(utils) == len(steady) and min(utils) >= threshold and all(
        s.idle_since is None and s.ssh_sessions == 0 and not s.jobs for s in steady)
    detail = (f"{len(steady)} samples in {ended - started:.0f} s of {matmuls} matmuls 8192x8192: GPU at "
              f"{min(utils, default=0)}-{max(utils, default=0)} % (threshold {threshold} %), idle_since empty in "
              f"{sum(s.idle_since is None for s in steady)}/{len(steady)}, ssh sessions {max((s.ssh_sessions for s in steady), default=0)}, "
              f"jobs {sorted({j for s in steady for j in s.jobs}) or 'none'}")
    return Check(name, OK if kept_by_gpu and len(steady) >= 2 else FAIL, detail), loop_end


def idle_after(box: Box, loop_end: float, start: str) -> Check:
    """After the loop: the first sample with idle_since set, and what the GPU showed then."""
    later = [s for _, s in box.samples if s.updated >= int(loop_end)]
    idle = next((s for s in later if s.idle_since is not None), None)
    if idle is None:
        return Check("idle: GPU idle after the loop", FAIL, f"no sample with idle_since set after the loop ({len(later)} samples)")
    gpus = ", ".join(f"GPU {i} at {p} %" for i, p in idle.gpu_util) or "no GPU"
    return Check("idle: GPU idle after the loop", OK,
                 f"idle_since set {idle.idle_since - loop_end:+.1f} s from {start} ({gpus}, ssh sessions "
                 f"{idle.ssh_sessions}, jobs {','.join(idle.jobs) or 'none'})")


def stopped(box: Box, loop_end: float, start: str, window: int, limit: int) -> Check:
    """The init exits 0 (the box's exit code) and runc calls the box stopped, within the limit."""
    name = "idle: box stopped itself"
    if box.exit_code is None:
        return Check(name, FAIL, f"still running {time.time() - loop_end:.1f} s after {start} (limit {limit} s)")
    took, status = box.exited_at - loop_end, box.runc_status()
    since = [s.idle_since for _, s in box.samples if s.idle_since is not None]
    detail = (f"init exit {box.exit_code}, runc state {status}, {took:.1f} s after {start}"
              + (f", {box.exited_at - since[-1]:.1f} s after idle_since" if since else "") + f" (window {window} s, limit {limit} s)")
    ok = box.exit_code == 0 and status == "stopped" and took <= limit
    return Check(name, OK if ok else FAIL, detail)


def stop_line(box: Box, box_log: Path) -> Check:
    """The line the watcher prints (the box's stdout, `docker logs`) and writes to ~/.devbox/idle/stopped."""
    log = box_log.read_text(errors="replace") if box_log.exists() else ""
    line = next((ln.strip() for ln in reversed(log.splitlines()) if ln.startswith(STOPPED_PREFIX)), "")
    written = box.stopped_path.read_text().strip() if box.stopped_path.exists() else ""
    ok = bool(line) and line == written and stopped_reason(log) is not None
    return Check("idle: stop line", OK if ok else FAIL,
                 line or f"none in the box's stdout; ~/.devbox/idle/stopped: {written or 'absent'}")
