"""`python -m bench.hung_host`: `devbox status` over a healthy host and one whose nvidia-smi
hangs (issue 23.2), on the real bed: how long the whole command takes, and when the healthy
host's row comes out, with the default question timeout (30 s) or `--timeout S`.

Both hosts are fake GPU hosts (real sshd on loopback, the shared Docker engine) whose
nvidia-smi replays an H100 recording (devbox.testbed.fake_driver); the hung one's is replaced
by `sleep`. Each ends by checking that no such sleep is left on the host.

    python -m bench.hung_host              # 3 runs, default timeout
    python -m bench.hung_host --timeout 5 --runs 2
"""
from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import testbed as tb  # noqa: E402

HEALTHY, HUNG = "gpu-noruntime-ok-bench", "gpu-noruntime-hung-bench"


def timed_status(env: dict, work: Path, *hosts: str) -> tuple[float, dict[str, float], int]:
    """(seconds in all, seconds until each host's row, exit code) of one `devbox status`."""
    began = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "devbox.cli", "status", *hosts], cwd=work, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    rows = {}
    for line in process.stdout:
        rows.update({h: round(time.monotonic() - began, 2) for h in hosts if line.startswith(h)})
    process.wait()
    return round(time.monotonic() - began, 2), rows, process.returncode


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=None, help="DEVBOX_QUESTION_TIMEOUT (default: devbox's)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="devbox-bench-hung-", dir="/var/lib"))
    work.chmod(0o755)
    bed = tb.start_testbed(work, [HEALTHY, HUNG])
    home = Path(tempfile.mkdtemp(prefix="devbox-bench-hung-home-"))
    tb.make_laptop(home, bed)
    project = home / "project"
    project.mkdir()
    (project / "devbox.toml").write_text("".join(f'[hosts.{h}]\ngpus = "all"\nbase_image = "auto"\n' for h in (HEALTHY, HUNG)))
    seconds = str(86000 + secrets.randbelow(999))
    override = work / HUNG / "nvidia-smi-override"
    override.write_text(f"#!/bin/sh\nexec sleep {seconds}\n")
    override.chmod(0o755)
    env = {**os.environ, "HOME": str(home)}
    if args.timeout:
        env["DEVBOX_QUESTION_TIMEOUT"] = f"{args.timeout:g}"
    try:
        healthy = [timed_status(env, project, HEALTHY)[0] for _ in range(args.runs)]
        both = [timed_status(env, project, HUNG, HEALTHY) for _ in range(args.runs)]
        left = subprocess.run(["pgrep", "-f", f"^sleep {seconds}$"], capture_output=True, text=True).stdout.split()
        print(f"status, healthy host alone:      median {statistics.median(healthy):.2f} s  (runs {healthy})")
        print(f"status, hung host + healthy one: median {statistics.median(t for t, _, _ in both):.2f} s in all, "
              f"healthy row after median {statistics.median(r[HEALTHY] for _, r, _ in both):.2f} s, "
              f"exit {both[0][2]}  (runs {[t for t, _, _ in both]})")
        print(f"hung nvidia-smi processes left on the host afterwards: {len(left)}")
    finally:
        bed.stop()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
