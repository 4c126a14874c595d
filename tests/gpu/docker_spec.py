"""Docker's own OCI config for a running container: what dockerd handed its runc.

Read from containerd's bundle folder. prepare_box_gpu.sh takes the seccomp filter Docker
makes for a box (no capabilities, x86-64) from it, and tests/test_box_runc.py compares
oci_box's translation with it, flag for flag.

    python3 tests/gpu/docker_spec.py seccomp IMAGE > box-seccomp.json
"""
from __future__ import annotations

import glob
import json
import subprocess
import sys

BUNDLES = ("/run/docker/containerd/daemon/io.containerd.runtime.v2.task/moby",   # dockerd's own containerd
           "/run/containerd/io.containerd.runtime.v2.task/moby")                  # the system's containerd


def docker_config(container: str) -> dict:
    """The config.json of a running container (full id or a unique prefix)."""
    full = subprocess.run(["docker", "inspect", "--format", "{{.Id}}", container], capture_output=True, text=True,
                          check=True).stdout.strip()
    for folder in BUNDLES:
        for path in glob.glob(f"{folder}/{full}/config.json"):
            with open(path) as f:
                return json.load(f)
    raise FileNotFoundError(f"no OCI bundle for {full} under {', '.join(BUNDLES)}")


def box_seccomp(image: str) -> dict:
    """The filter Docker gives a box of `image` (--cap-drop ALL, as devbox runs it)."""
    cid = subprocess.run(["docker", "run", "-d", "--rm", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                          "--user", "1000:1000", "--entrypoint", "sleep", image, "60"],
                         capture_output=True, text=True, check=True).stdout.strip()
    try:
        return docker_config(cid)["linux"]["seccomp"]
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True)


if __name__ == "__main__":
    json.dump(box_seccomp(sys.argv[2]), sys.stdout, indent=1)
