"""What the idle watcher costs: CPU time and memory of devbox-idle-watch, measured while it runs.

    python -m bench.idle_watch                 # in a real box on the bed (docker), 1 s samples
    python -m bench.idle_watch --direct        # the script itself on this machine (the GPU machine:
                                               # real nvidia-smi), no docker needed

The box is kept busy by a tmux session (so it never stops) and sampled every second, the
fastest the watcher ever samples (windows of 10 s or less); CPU is the watcher's own
utime+stime plus what it spent in the children it waited for (date, sleep, mv, tmux,
nvidia-smi: cutime+cstime), read from /proc/PID/stat before and after, and scaled to 10
minutes. Memory is the watcher's VmRSS (its children live for milliseconds).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WATCHER = REPO / "images" / "ssh" / "idle-watch.sh"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, proc: str = "/proc") -> float:
    """utime+stime+cutime+cstime of PID (fields 14-17 of stat, after the command's parentheses)."""
    fields = Path(f"{proc}/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / TICK


def rss_kib(pid: int, proc: str = "/proc") -> int:
    line = next(line for line in Path(f"{proc}/{pid}/status").read_text().splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1])


def measure(pid: int, seconds: float) -> dict:
    before, start = cpu_seconds(pid), time.monotonic()
    rss = [rss_kib(pid)]
    while time.monotonic() - start < seconds:
        time.sleep(5)
        rss.append(rss_kib(pid))
    cpu, wall = cpu_seconds(pid) - before, time.monotonic() - start
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 3), "cpu_percent": round(100 * cpu / wall, 3),
            "cpu_s_per_10_min": round(cpu * 600 / wall, 2), "rss_kib_max": max(rss), "rss_kib_min": min(rss)}


def in_box(seconds: float) -> dict:
    sys.path.insert(0, str(REPO / "tests"))
    import testbed as tb
    from devbox.image import ImageSpec, build_locally

    image = build_locally(ImageSpec(tb.BASE_IMAGE)).tag
    name = f"devbox-bench-idle-{os.getpid()}"
    subprocess.run(["docker", "run", "--detach", "--name", name, "--init", "--read-only", "--tmpfs", "/tmp:rw,exec,mode=1777",
                    "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--user", "1000:1000",
                    "--mount", f"type=volume,source={name},target=/home/dev", "-e", "DEVBOX_IDLE_STOP=10", image],
                   check=True, capture_output=True)
    try:
        subprocess.run(["docker", "exec", name, "tmux", "new-session", "-d", "-s", "keep", "sleep 100000"], check=True)
        time.sleep(3)
        top = subprocess.run(["docker", "top", name, "-o", "pid,cmd"], capture_output=True, text=True, check=True).stdout
        pid = int(next(line.split()[0] for line in top.splitlines() if "devbox-idle-watch" in line))
        tmux = int(next(line.split()[0] for line in top.splitlines() if "tmux" in line and "new-session" in line))
        tmux_before = cpu_seconds(tmux)
        result = measure(pid, seconds)
        result["tmux_server_cpu_s"] = round(cpu_seconds(tmux) - tmux_before, 3)   # answering list-sessions
        result["state"] = subprocess.run(["docker", "exec", name, "cat", "/home/dev/.devbox/idle/state"],
                                         capture_output=True, text=True).stdout
        return result
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        subprocess.run(["docker", "volume", "rm", name], capture_output=True)


def direct(seconds: float) -> dict:
    with tempfile.TemporaryDirectory() as home:
        # Threshold 0: any GPU counts as busy, so the box stays up even where tmux is missing.
        env = {**os.environ, "HOME": home, "DEVBOX_IDLE_STOP": "10", "DEVBOX_IDLE_GPU_UTIL": "0", "TMUX_TMPDIR": home}
        stand_in = subprocess.Popen(["sleep", str(int(seconds) + 60)])   # plays sshd: the pid the watcher ends
        if shutil.which("tmux"):
            subprocess.run(["tmux", "new-session", "-d", "-s", "keep", "sleep 100000"], env=env, check=True)
        watcher = subprocess.Popen(["sh", str(WATCHER), str(stand_in.pid)], env=env, stdout=subprocess.DEVNULL)
        try:
            time.sleep(3)
            result = measure(watcher.pid, seconds)
            result["state"] = (Path(home) / ".devbox" / "idle" / "state").read_text()
            result["stopped"] = watcher.poll() is not None
            return result
        finally:
            watcher.terminate()
            stand_in.terminate()
            subprocess.run(["tmux", "kill-server"], env=env, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--direct", action="store_true", help="run the script here instead of in a box")
    parser.add_argument("--seconds", type=float, default=120)
    args = parser.parse_args()
    result = direct(args.seconds) if args.direct else in_box(args.seconds)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
