"""The test bed lives in the package (devbox/testbed.py) so `make demo` can use it too."""
import json
import os
import subprocess
import sys

from devbox.testbed import *  # noqa: F401,F403
from devbox.testbed import FIXTURES, UNREACHABLE  # noqa: F401

# Stand-ins for the real pytorch images' Ubuntu bases (scripts/ubuntu-bases.sh makes them).
UBUNTU_BASES = ("local/ubuntu:22.04", "local/ubuntu:24.04")


def ssh_audit(port: int, address: str = "127.0.0.1") -> dict:
    """ssh-audit's verdict on one server: its banner, (algorithm, note) fails and warns, CVEs."""
    env = {**os.environ, "PATH": f"{sys.prefix}/bin:{os.environ['PATH']}"}
    done = subprocess.run(["ssh-audit", "-j", "-p", str(port), address], capture_output=True, text=True,
                           timeout=120, env=env)
    report = json.loads(done.stdout)
    found = {"banner": report.get("banner", {}).get("raw", ""), "fail": [], "warn": [],
             "cves": report.get("cves", []), "raw": done.stdout}
    for section in ("kex", "key", "enc", "mac"):
        for algo in report[section]:
            for level in ("fail", "warn"):
                found[level] += [(algo["algorithm"], note) for note in algo.get("notes", {}).get(level, [])]
    return found
