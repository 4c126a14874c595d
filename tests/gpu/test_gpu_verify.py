"""`devbox verify`'s checks over a real SSH session on a real NVIDIA GPU.

Only meaningful on a GPU machine prepared by tests/gpu/run_on_device.sh, which starts the
box's hardened sshd_config as a non-root user on 127.0.0.1 and exports DEVBOX_GPU_*.
Everywhere else (CI, laptops) every test here skips with the reason.

The session is the one `devbox verify` uses (devbox.verify.BoxSession: paramiko, pinned
host key, key login) and the checks are devbox.verify.run_checks, unchanged; the only
difference from a real box is the socket (straight to 127.0.0.1 instead of ProxyJump).
"""
from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu

ENV_VARS = ("DEVBOX_GPU_SSH_PORT", "DEVBOX_GPU_SSH_KEY", "DEVBOX_GPU_HOST_KEY", "DEVBOX_GPU_USER")
SKIP_REASON = "needs an NVIDIA GPU and the sshd started by tests/gpu/run_on_device.sh"

AUTH_CHECKS = ("key login", "only publickey offered", "password refused", "keyboard-interactive refused", "root login refused")
IDENTITY_CHECKS = ("uid/gid", "no root process", "no capabilities", "no new privileges", "no sudo", "tmux")
GPU_CHECKS = ("nvidia-smi", "torch cuda", "gpu count", "cuda matmul")


def _unavailable_reason() -> str | None:
    missing = [name for name in ENV_VARS if not os.environ.get(name)]
    if missing:
        return f"{SKIP_REASON} (unset: {', '.join(missing)})"
    if shutil.which("nvidia-smi") is None:
        return f"{SKIP_REASON} (no nvidia-smi on PATH)"
    return None


def _read(folder: str | None, name: str) -> str:
    path = Path(folder or "/nonexistent") / name
    return path.read_text(errors="replace") if path.is_file() else ""


@pytest.fixture(scope="module")
def verified():
    """Run devbox verify's checks once; write the JSON report whatever they find."""
    reason = _unavailable_reason()
    if reason:
        pytest.skip(reason)
    import paramiko  # noqa: F401  (a dependency of devbox; here only to fail early and clearly)

    from devbox.verify import BoxSession, Expectations, last_json, load_identity, run_checks

    port = int(os.environ["DEVBOX_GPU_SSH_PORT"])
    user = os.environ["DEVBOX_GPU_USER"]
    pinned = os.environ["DEVBOX_GPU_HOST_KEY"].strip()
    entry = pwd.getpwnam(user)
    home = Path(entry.pw_dir)

    class RecordingSession(BoxSession):
        """BoxSession that also keeps what each remote command returned (for the report)."""

        transcript: list[dict] = []

        def run(self, command, stdin=None, timeout=120):
            started = time.monotonic()
            code, out, err = super().run(command, stdin=stdin, timeout=timeout)
            self.transcript.append({"command": command[:200], "exit": code, "seconds": round(time.monotonic() - started, 2),
                                    "stdout_tail": out[-2000:], "stderr_tail": err[-2000:]})
            return code, out, err

    session = RecordingSession(lambda: socket.create_connection(("127.0.0.1", port), timeout=15), pinned, user,
                               load_identity(Path(os.environ["DEVBOX_GPU_SSH_KEY"])), f"127.0.0.1:{port}")
    expect = Expectations(user=user, uid=entry.pw_uid, gid=entry.pw_gid,
                          mounts=((str(home / "workspace"), False), ("/usr/share", True)), gpus=None)
    started = time.monotonic()
    session.login()
    transport = session.transport
    try:
        checks = run_checks(session, expect)
    finally:
        session.close()
    seconds = round(time.monotonic() - started, 1)

    probe = next((last_json(t["stdout_tail"]) for t in session.transcript if "devbox-gpu-probe" in t["command"]), None) or {}
    artifacts = os.environ.get("DEVBOX_GPU_ARTIFACTS")
    query_csv = _read(artifacts, "nvidia-smi-query.csv")
    from devbox.facts import parse_gpu_csv

    gpus, _ = parse_gpu_csv(query_csv)
    report = {
        "what": "devbox.verify.run_checks over a real SSH session (paramiko -> OpenSSH sshd running the box's sshd_config as a non-root user)",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "summary": {
            "gpu_name": gpus[0].name if gpus else None,
            "gpu_count_nvidia_smi": len(gpus),
            "driver": _read(artifacts, "driver.txt").strip() or None,
            "torch": probe.get("torch"),
            "torch_cuda": probe.get("cuda"),
            "cuda_available": probe.get("cuda_available"),
            "torch_device_count": probe.get("device_count"),
            "matmul_max_abs_err": probe.get("matmul_max_abs_err"),
            "matmul_ok": probe.get("matmul_ok"),
            "nccl": probe.get("nccl", "not run: one GPU"),
            "nccl_ok": probe.get("nccl_ok"),
            "failed": [c.name for c in checks if c.status == "fail"],
            "skipped": [c.name for c in checks if c.status == "skipped"],
            "checks_seconds": seconds,
        },
        "ssh": {
            "server_version": transport.remote_version,
            "pinned_host_key": pinned,
            "cipher": getattr(transport, "remote_cipher", None),
            "mac": getattr(transport, "remote_mac", None),
            "user": user,
            "uid": entry.pw_uid,
            "gid": entry.pw_gid,
            "pid_namespace": os.environ.get("DEVBOX_GPU_PIDNS") == "1",
        },
        "checks": [c.as_dict() for c in checks],
        "gpu_probe": probe,
        "nvidia_smi": {
            "query_csv": query_csv,
            "list": _read(artifacts, "nvidia-smi-L.txt"),
            "banner": _read(artifacts, "nvidia-smi.txt"),
        },
        "host_torch": _read(artifacts, "torch.txt").strip() or None,
        "transcript": session.transcript,
    }
    out = os.environ.get("DEVBOX_GPU_REPORT")
    if out:
        Path(out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["summary"], indent=2))
    for check in checks:
        print(f"{check.status:8} {check.name}: {check.detail}")
    return {c.name: c for c in checks}, report


def _assert_ok(checks: dict, names) -> None:
    bad = {n: (checks[n].status, checks[n].detail) for n in names if n not in checks or checks[n].status != "ok"}
    assert not bad, f"checks not ok: {bad}"


def test_key_login_works_and_other_ways_in_are_refused(verified):
    checks, _ = verified
    _assert_ok(checks, AUTH_CHECKS)


def test_identity_is_the_non_root_user_without_privileges(verified):
    checks, report = verified
    names = list(IDENTITY_CHECKS)
    if not report["ssh"]["pid_namespace"]:
        # Without a PID namespace the machine's own root processes are visible to the
        # session; a real box has its own. That check then says nothing about devbox.
        names.remove("no root process")
    _assert_ok(checks, names)


def test_gpu_checks_pass_not_skip(verified):
    checks, report = verified
    _assert_ok(checks, GPU_CHECKS)
    summary = report["summary"]
    assert summary["cuda_available"] is True
    assert summary["torch_device_count"] == summary["gpu_count_nvidia_smi"] > 0
    assert summary["matmul_ok"] is True and summary["matmul_max_abs_err"] < 1e-2


def test_nccl_allreduce_on_every_gpu(verified):
    checks, report = verified
    if report["summary"]["gpu_count_nvidia_smi"] < 2:
        assert checks["nccl all-reduce"].status == "skipped"
        pytest.skip("one GPU: NCCL all-reduce needs two (run on nvidia-h200-x2)")
    _assert_ok(checks, ["nccl all-reduce"])
    nccl = report["gpu_probe"]["nccl"]
    assert nccl["got"] == [nccl["expected"]] * nccl["world"]


def test_mount_probes(verified):
    checks, _ = verified
    _assert_ok(checks, [n for n in checks if n.startswith("mount ")])


def test_every_check_ok(verified):
    checks, report = verified
    allowed = set() if report["ssh"]["pid_namespace"] else {"no root process"}
    if report["summary"]["gpu_count_nvidia_smi"] < 2:
        allowed.add("nccl all-reduce")  # skipped on one GPU, by design
    _assert_ok(checks, [n for n in checks if n not in allowed])
