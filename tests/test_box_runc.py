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
sys.path.insert(0, str(REPO / "tests" / "gpu"))
import oci_box  # noqa: E402
from docker_spec import docker_config  # noqa: E402

TINI = "/usr/bin/tini-static"   # Docker's docker-init (Debian's docker.io links it there)
GPU_CHECKS = {"nvidia-smi", "torch cuda", "gpu count", "cuda matmul", "nccl all-reduce"}


@pytest.fixture
def workdir():
    # Not below /tmp: sshd refuses authorized keys under a world-writable folder.
    path = Path(tempfile.mkdtemp(prefix="devbox-runc-", dir="/var/lib"))
    path.chmod(0o755)   # the host's sshd reads the ops user's keys as that user
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _run_box_gpu(box_image, workdir: Path, host: str, settings: str = "") -> dict:
    """box_gpu.py with a devbox.toml for `host` (no GPU, a read-only host folder, `settings`); its report."""
    _require(None if shutil.which("runc") and os.path.exists(TINI) else "runc and tini-static (Docker's) not found")
    shared = workdir / "data"
    shared.mkdir()
    (workdir / "devbox.toml").write_text(
        f'[hosts.{host}]\nbase_image = "{tb.BASE_IMAGE}"\ngpus = "none"\n'
        f'volumes = ["workspace:/workspace", "{shared}:/data:ro"]\n{settings}')
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
    report = json.loads((out / "box-verify.json").read_text())
    report.update(stdout=done.stdout, returncode=done.returncode, config=json.loads((out / "box-config.json").read_text()))
    assert subprocess.run(["runc", "state", f"devbox-{host}"], capture_output=True).returncode != 0   # deleted after the run
    return report


def test_the_box_under_runc_from_devbox_run_args_passes_every_verify_check(testbed, box_image, workdir):
    report = _run_box_gpu(box_image, workdir, f"runcbox{SUFFIX}")
    assert report["returncode"] == 0, report["stdout"][-3000:]
    status = {c["name"]: c["status"] for c in report["checks"]}
    assert {n for n, s in status.items() if s != "ok"} == GPU_CHECKS, report["lines"]
    for name in ("no capabilities", "no new privileges", "no root process", "memlock (ulimit -l)", "/dev/shm size",
                 "mount /data read-only", "mount /workspace writable", "VS Code Remote-SSH", "openssh client path"):
        assert status[name] == "ok", report["lines"]
    config = report["config"]
    assert config["root"]["readonly"] and config["process"]["noNewPrivileges"] and config["process"]["user"]["uid"] != 0


def test_with_idle_stop_the_box_under_runc_stops_itself_after_verify_and_says_why(testbed, box_image, workdir):
    """The GPU run's idle checks (tests/gpu/box_idle.py) without a GPU: the loop is skipped, the
    rest must hold: verify's SSH sessions (through the proxy, from the gateway) kept the box up,
    then it stopped itself with exit 0 within the window and a few samples."""
    report = _run_box_gpu(box_image, workdir, f"runcidle{SUFFIX}", 'idle_stop = "6s"\n')
    assert report["returncode"] == 0, report["stdout"][-3000:]
    status = {c["name"]: c["status"] for c in report["checks"]}
    assert {n for n, s in status.items() if s != "ok"} == GPU_CHECKS | {"idle: GPU busy under a matmul loop"}, report["lines"]
    assert {"idle: watcher", "idle: GPU idle after the loop", "idle: box stopped itself", "idle: stop line"} <= set(status)
    assert "DEVBOX_IDLE_STOP=6" in report["config"]["process"]["env"]
    detail = {c["name"]: c["detail"] for c in report["checks"]}
    assert detail["idle: box stopped itself"].startswith("init exit 0, runc state stopped")
    assert detail["idle: stop line"].startswith("devbox-idle: stopped idle 6s since ")


def _options(mount: dict) -> set[str]:
    """Mount options that mean something: bind = rbind here, rw and propagation are defaults."""
    return {"rbind" if o == "bind" else o for o in mount.get("options", [])} - {"rw", "rprivate", "private"}


def test_the_translation_is_what_docker_hands_its_runc_for_the_same_argv(testbed, box_image):
    """Docker's own config.json for devbox's argv, against oci_box's: every hardening field the same."""
    import dataclasses

    from devbox.config import BoxSpec, Volume
    from devbox.plan import run_args

    spec = BoxSpec(f"runcdiff{SUFFIX}", base_image=tb.BASE_IMAGE, gpus="none", volumes=(Volume("workspace", "/workspace"),))
    facts = dataclasses.replace(tb.local_facts(spec, ["memlock"]), host_memory=8 << 30, host_cpus=2)
    argv = run_args(spec, facts, tb.free_port("127.0.0.1"), box_image.tag, {"devbox.managed": "true"}, None, "create")
    image = json.loads(subprocess.run(["docker", "image", "inspect", box_image.tag, "--format", "{{json .Config}}"],
                                      capture_output=True, text=True, check=True).stdout)
    subprocess.run(["docker", "network", "create", spec.network], capture_output=True, check=True)
    try:
        cid = subprocess.run(["docker", *argv], capture_output=True, text=True, check=True).stdout.strip()
        subprocess.run(["docker", "start", cid], capture_output=True, check=True)
        docker = docker_config(cid)
        machine = oci_box.Machine((), {}, 195, (), "/v", "/s", "/t/tini")
        ours = oci_box.translate(argv, image, machine, docker["linux"].get("seccomp")).config
    finally:
        subprocess.run(["docker", "rm", "-f", spec.box_name], capture_output=True)
        subprocess.run(["docker", "volume", "rm", *[spec.volume_name(v) for v in spec.all_volumes()], spec.keys_volume],
                       capture_output=True)
        subprocess.run(["docker", "network", "rm", spec.network], capture_output=True)
    dp, op = docker["process"], ours["process"]
    for key in ("user", "args", "noNewPrivileges", "rlimits", "cwd"):
        assert op[key] == dp[key], key
    assert set(op["env"]) == set(dp["env"])
    assert all(not dp["capabilities"].get(k) for k in op["capabilities"]) and all(v == [] for v in op["capabilities"].values())
    assert ours["root"]["readonly"] == docker["root"]["readonly"] is True
    assert ours["hostname"] == docker["hostname"]
    dm, om = ({m["destination"]: m for m in c["mounts"]} for c in (docker, ours))
    assert set(om) == set(dm)
    for target, mount in dm.items():
        assert om[target]["type"] == mount["type"] and _options(om[target]) == _options(mount), target
    dl, ol = docker["linux"], ours["linux"]
    for key in ("pids", "cpu"):
        assert ol["resources"][key] == {k: v for k, v in dl["resources"][key].items() if k in ol["resources"][key]}, key
    assert ol["resources"]["memory"]["limit"] == dl["resources"]["memory"]["limit"]
    assert set(dl["maskedPaths"]) <= set(ol["maskedPaths"]) and ol["readonlyPaths"] == dl["readonlyPaths"]
    assert {n["type"] for n in dl["namespaces"]} <= {n["type"] for n in ol["namespaces"]}
    assert ol["sysctl"] == dl["sysctl"]
    assert ol["seccomp"] == dl["seccomp"]
