"""The README's first command: `make demo` provisions the built-in local host end to end."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from conftest import SUFFIX, remove_boxes


def test_demo_provisions_the_local_host_and_a_rerun_changes_nothing(testbed):
    demo = Path(tempfile.mkdtemp(prefix="devbox-demo-test-", dir="/var/lib"))
    host = f"demo-host{SUFFIX}"
    env = {**os.environ, "DEVBOX_DEMO_DIR": str(demo), "DEVBOX_DEMO_HOST": host}
    try:
        first = subprocess.run([sys.executable, "-m", "devbox.demo"], env=env, capture_output=True, text=True, timeout=300)
        assert first.returncode == 0, first.stdout + first.stderr
        assert f"ready: ssh devbox-{host}" in first.stdout and "[fail]" not in first.stdout
        login = subprocess.run(["ssh", "-F", str(demo / "laptop/.ssh/config"), "-o", "BatchMode=yes", f"devbox-{host}", "whoami"],
                               capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        assert login.stdout.strip() == "dev", login.stderr
        again = subprocess.run([sys.executable, "-m", "devbox.demo"], env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0 and "nothing changed" in again.stdout, again.stdout + again.stderr
    finally:
        pid = demo / "sshd.pid"
        if pid.exists():
            subprocess.run(["kill", pid.read_text().strip()], capture_output=True)
        remove_boxes([host])
        shutil.rmtree(demo, ignore_errors=True)
