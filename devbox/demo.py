"""`make demo`: provision the built-in local test host end to end with `devbox up`.

The "GPU host" is a real sshd on 127.0.0.10 using this machine's Docker engine; the
"laptop" is a HOME under /var/lib/devbox-demo, so your own ~/.ssh is never touched.
Re-running starts the same host again (same keys and port) and re-runs `up`: a no-op.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from devbox import testbed as tb

# Overridable so a test can run the demo without touching yours.
DEMO = Path(os.environ.get("DEVBOX_DEMO_DIR", "/var/lib/devbox-demo"))
HOST = os.environ.get("DEVBOX_DEMO_HOST", "local-gpu")


def stop_host() -> None:
    pidfile = DEMO / "sshd.pid"
    if pidfile.exists():
        try:
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
        except (ProcessLookupError, ValueError):
            pass


def resume_host(home: Path) -> bool:
    """Start the previous run's sshd again: same host key, address, port and laptop, so
    the `up` that follows is the no-op it should be. False when there is none."""
    config = DEMO / "host" / HOST / "sshd_config"
    if not config.exists() or not (home / ".ssh" / "config").exists():
        return False
    listen = next(line.split()[1] for line in config.read_text().splitlines() if line.startswith("ListenAddress"))
    address, port = listen.rsplit(":", 1)
    try:
        process = tb.launch_sshd(config.parent, address, int(port), detach=True)
    except RuntimeError:  # the port was taken meanwhile: start afresh
        return False
    (DEMO / "sshd.pid").write_text(str(process.pid))
    return True


def fresh_host(home: Path) -> None:
    for old in (DEMO / "host", home):
        if old.exists():
            subprocess.run(["rm", "-rf", str(old)], check=True)
    bed = tb.start_testbed(DEMO / "host", [HOST], detach=True)
    (DEMO / "sshd.pid").write_text(str(bed.hosts[HOST].process.pid))
    tb.make_laptop(home, bed)


def main() -> int:
    reason = tb.testbed_unavailable_reason()
    if reason:
        print(f"demo: cannot run here: {reason}", file=sys.stderr)
        return 2
    DEMO.mkdir(mode=0o755, exist_ok=True)
    DEMO.chmod(0o755)  # the host's ssh user reads authorized_keys below it
    home = DEMO / "laptop"
    stop_host()
    if not resume_host(home):
        fresh_host(home)
    laptop = tb.Laptop(home)
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
