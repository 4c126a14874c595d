"""`make demo`: provision the built-in local test host end to end with `devbox up`.

The "GPU host" is a real sshd on 127.0.0.10 using this machine's Docker engine; the
"laptop" is a HOME under /var/lib/devbox-demo, so your own ~/.ssh is never touched.
Re-running restarts the host's sshd and re-runs `up` (a no-op when nothing changed).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from devbox import testbed as tb

DEMO = Path("/var/lib/devbox-demo")
HOST = "local-gpu"


def restart_host() -> tb.TestBed:
    pidfile = DEMO / "sshd.pid"
    if pidfile.exists():
        try:
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
        except (ProcessLookupError, ValueError):
            pass
    bed_dir = DEMO / "host"
    if bed_dir.exists():
        subprocess.run(["rm", "-rf", str(bed_dir)], check=True)
    bed = tb.start_testbed(bed_dir, [HOST], detach=True)
    pidfile.write_text(str(bed.hosts[HOST].process.pid))
    return bed


def main() -> int:
    reason = tb.testbed_unavailable_reason()
    if reason:
        print(f"demo: cannot run here: {reason}", file=sys.stderr)
        return 2
    DEMO.mkdir(mode=0o755, exist_ok=True)
    bed = restart_host()
    home = DEMO / "laptop"
    if home.exists():
        subprocess.run(["rm", "-rf", str(home)], check=True)
    laptop = tb.make_laptop(home, bed)
    work = DEMO / "project"
    (work / "keys").mkdir(parents=True, exist_ok=True)
    (work / "devbox.toml").write_text(f'[defaults]\nplaybook = "cpu"\nbase_image = "{tb.BASE_IMAGE}"\n')
    env = {**os.environ, "HOME": str(home)}
    done = subprocess.run([sys.executable, "-m", "devbox.cli", "up", HOST], cwd=work, env=env)
    if done.returncode == 0:
        print(f"\nThe box is up. Log in as the laptop would:\n  ssh -F {laptop.ssh_config} devbox-{HOST}\n"
              f"or run devbox as that laptop:\n  cd {work} && HOME={home} {sys.prefix}/bin/devbox status {HOST}")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
