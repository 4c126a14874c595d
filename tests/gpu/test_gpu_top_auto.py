"""On a real GPU (tests/gpu/run_on_device.sh): `base_image = "auto"` for the real driver and
GPU, and `devbox top --once --json` over a real SSH session parsing the real nvidia-smi while
a "job" of the login user holds GPU memory. Skips elsewhere, like test_gpu_verify.py."""
from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_gpu_verify import _unavailable_reason

pytestmark = pytest.mark.gpu
REPO = Path(__file__).resolve().parent.parent.parent
OUT = Path(os.environ.get("OUT", "/tmp/devbox-gpu-out"))


@pytest.fixture(scope="module", autouse=True)
def on_a_gpu():
    reason = _unavailable_reason()
    if reason:
        pytest.skip(reason)


def test_auto_chooses_an_image_for_the_real_driver_and_gpu():
    from devbox.basetag import choose, load_table, problems
    from devbox.config import BoxSpec
    from devbox.facts import gpu_script, parse_facts

    answer = subprocess.run(["sh", "-c", gpu_script(BoxSpec("device"))], capture_output=True, text=True).stdout
    facts = parse_facts(answer)
    choice = choose(BoxSpec("device"), facts)
    import torch
    here = f"sm_{torch.cuda.get_device_capability(0)[0]}{torch.cuda.get_device_capability(0)[1]}"
    record = {"gpus": [g.__dict__ for g in facts.gpus], "driver_cuda": facts.driver_cuda, **choice.as_dict(),
              "rejected": {r.tag: problems(r, facts) for r in load_table() if problems(r, facts)},
              "system_torch": torch.__version__, "system_torch_arch_list": torch.cuda.get_arch_list(), "gpu_arch": here,
              "raw_answer": answer}
    (OUT / "auto-choice.json").write_text(json.dumps(record, indent=2))
    assert facts.gpus and all(g.compute_cap and g.uuid.startswith("GPU-") for g in facts.gpus)
    assert choice.auto and choice.tag.startswith("pytorch/pytorch:") and not problems(
        next(r for r in load_table() if r.tag == choice.tag), facts)
    # the table's row for the torch this machine has (2.11.0+cu130) matches torch's own arch list
    row = next((r for r in load_table() if r.tag == "pytorch/pytorch:2.11.0-cuda13.0-cudnn9-runtime"), None)
    if torch.__version__.startswith("2.11.0") and torch.version.cuda == "13.0":
        listed = sorted(f"sm_{a.major}{a.minor}" for a in row.archs)
        assert listed == sorted(a for a in torch.cuda.get_arch_list() if a.startswith("sm_"))


def test_top_once_json_reads_the_real_nvidia_smi_over_ssh_and_names_the_job(tmp_path):
    user = os.environ["DEVBOX_GPU_USER"]
    entry = pwd.getpwnam(user)
    job_dir = Path(entry.pw_dir) / ".devbox" / "jobs" / "train"
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "run.sh").write_text(
        f"exec {sys.executable} -c 'import torch, time; x = torch.empty(2 << 30, dtype=torch.uint8, device=\"cuda\"); "
        "torch.cuda.synchronize(); print(\"holding\", flush=True); time.sleep(60)'\n")
    subprocess.run(["chown", "-R", f"{entry.pw_uid}:{entry.pw_gid}", str(Path(entry.pw_dir) / ".devbox")], check=True)
    job = subprocess.Popen(["runuser", "-u", user, "--", "sh", str(job_dir / "run.sh")], stdout=subprocess.PIPE, text=True,
                           env={**os.environ, "HOME": entry.pw_dir})
    try:
        assert job.stdout.readline().strip() == "holding"
        home = tmp_path / "laptop"
        (home / ".ssh").mkdir(parents=True)
        port = os.environ.get("DEVBOX_GPU_HOST_PORT") or os.environ["DEVBOX_GPU_SSH_PORT"]
        (home / ".ssh" / "known_hosts").write_text(f"[127.0.0.1]:{port} {os.environ['DEVBOX_GPU_HOST_KEY'].strip()}\n")
        (home / ".ssh" / "config").write_text(
            f"Host gpubox\n  HostName 127.0.0.1\n  Port {port}\n  User {user}\n"
            f"  IdentityFile {os.environ['DEVBOX_GPU_SSH_KEY']}\n  IdentitiesOnly yes\n")
        for name, argv in (("nvidia-smi-query-memory.csv", ["--query-gpu=index,memory.used", "--format=csv,noheader,nounits"]),
                           ("nvidia-smi-q-busy.xml", ["-q", "-x"])):
            (OUT / name).write_text(subprocess.run(["nvidia-smi", *argv], capture_output=True, text=True).stdout)
        began = time.monotonic()
        done = subprocess.run([sys.executable, "-c", "from devbox.cli import main; main()", "top", "gpubox", "--once", "--json"],
                              capture_output=True, text=True, cwd=tmp_path,
                              env={**os.environ, "HOME": str(home), "PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO))})
        seconds = time.monotonic() - began
        (OUT / "top-once.json").write_text(done.stdout + (f"\n# stderr: {done.stderr}" if done.stderr else "")
                                           + f"\n# wall time of the whole CLI call: {seconds:.2f} s\n")
        assert done.returncode == 0, done.stdout + done.stderr
        (row,) = json.loads(done.stdout)
        gpus = row["gpus"]
        assert len(gpus) == int(subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.count("GPU "))
        assert all(g["uuid"].startswith("GPU-") and g["memory_total_mib"] > 0 and g["temperature_c"] is not None
                   and g["power_w"] is not None and g["utilization_pct"] is not None for g in gpus)
        mine = [p for g in gpus for p in g["processes"] if p["job"] == "train"]   # python, a child of runuser … run.sh
        assert mine and mine[0]["memory_mib"] >= 2048 and mine[0]["box"] == ""
    finally:
        job.kill()
        job.wait()
