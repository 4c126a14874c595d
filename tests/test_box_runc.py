"""The GPU evidence's own path, on the bed without a GPU: devbox's box image started under runc
from the `docker create` argv run_args gives (tests/gpu/oci_box.py), reached through a host as
`devbox verify` reaches a box (tests/gpu/box_gpu.py). Every check but the GPU ones must be ok,
so the script that runs on the GPU machine is known to work before device time is spent."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import testbed as tb
from conftest import SUFFIX, _require

REPO = Path(__file__).resolve().parent.parent
TINI = "/usr/bin/tini-static"   # Docker's docker-init (Debian's docker.io links it there)
GPU_CHECKS = {"nvidia-smi", "torch cuda", "gpu count", "cuda matmul", "nccl all-reduce"}


@pytest.fixture
def workdir():
    # Not below /tmp: sshd refuses authorized keys under a world-writable folder.
    path = Path(tempfile.mkdtemp(prefix="devbox-runc-", dir="/var/lib"))
    path.chmod(0o755)   # the host's sshd reads the ops user's keys as that user
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_box_under_runc_from_devbox_run_args_passes_every_verify_check(testbed, box_image, workdir):
    _require(None if shutil.which("runc") and os.path.exists(TINI) else "runc and tini-static (Docker's) not found")
    host = f"runcbox{SUFFIX}"
    shared = workdir / "data"
    shared.mkdir()
    (workdir / "devbox.toml").write_text(
        f'[hosts.{host}]\nbase_image = "{tb.BASE_IMAGE}"\ngpus = "none"\n'
        f'volumes = ["workspace:/workspace", "{shared}:/data:ro"]\n')
    carry = workdir / "carry"
    carry.mkdir()
    image = json.loads(subprocess.run(["docker", "image", "inspect", box_image.tag, "--format", "{{json .Config}}"],
                                      capture_output=True, text=True, check=True).stdout)
    (carry / "box-image.json").write_text(json.dumps({**image, "Tag": box_image.tag}))
    cid = subprocess.run(["docker", "create", box_image.tag], capture_output=True, text=True, check=True).stdout.strip()
    try:
        with open(carry / "box.tar", "wb") as tar:
            subprocess.run(["docker", "export", cid], stdout=tar, check=True)
    finally:
        subprocess.run(["docker", "rm", cid], capture_output=True)
    out = workdir / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(REPO / "tests/gpu/box_gpu.py"), "--carry", str(carry), "--work", str(workdir / "w"),
                           "--out", str(out), "--runc", shutil.which("runc"), "--init", TINI, "--config", str(workdir / "devbox.toml"),
                           "--host", host], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "box-verify.json").read_text())
    status = {c["name"]: c["status"] for c in report["checks"]}
    assert {n for n, s in status.items() if s != "ok"} == GPU_CHECKS, report["lines"]
    for name in ("no capabilities", "no new privileges", "no root process", "memlock (ulimit -l)", "/dev/shm size",
                 "mount /data read-only", "mount /workspace writable", "VS Code Remote-SSH", "openssh client path"):
        assert status[name] == "ok", report["lines"]
    config = json.loads((out / "box-config.json").read_text())
    assert config["root"]["readonly"] and config["process"]["noNewPrivileges"] and config["process"]["user"]["uid"] != 0
    assert subprocess.run(["runc", "state", f"devbox-{host}"], capture_output=True).returncode != 0   # deleted after the run
