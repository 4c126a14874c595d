"""GPU health, the auto base and the NCCL runtime limits on the real test bed: real sshd,
real dockerd, real boxes and jobs; the GPU host's nvidia-smi replays an H100 recording
(devbox.testbed.fake_driver), since no machine here has a GPU."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from devbox.config import BoxSpec
from devbox.testbed import FIXTURES, local_facts


def test_the_box_gets_the_engine_memlock_limit_and_verify_reports_it_with_shm(laptop):
    # Here dockerd has an 8 MiB hard limit and no CAP_SYS_RESOURCE: `--ulimit memlock=-1` fails
    # ("error setting rlimit type 8"), so the box must start with the highest allowed value.
    allowed = local_facts(BoxSpec(laptop.host1), ["memlock"]).memlock_max
    reports, done = laptop.devbox.json("up", laptop.host1)
    assert reports[0]["error"] == "", reports
    inspect = json.loads(subprocess.run(["docker", "inspect", f"devbox-{laptop.host1}"], capture_output=True, text=True).stdout)[0]
    memlock = next(u for u in inspect["HostConfig"]["Ulimits"] if u["Name"] == "memlock")
    checks = {c["name"]: c for c in reports[0]["checks"]}
    if allowed == -1:
        assert memlock["Hard"] == -1 and checks["memlock (ulimit -l)"]["detail"].startswith("unlimited")
    else:
        assert memlock["Hard"] == memlock["Soft"] == allowed
        assert checks["memlock (ulimit -l)"]["detail"] == f"{allowed // 1024} (want {allowed // 1024})"
        assert f"{allowed // 1024} KiB, not unlimited" in done.stderr
    assert checks["memlock (ulimit -l)"]["status"] == "ok" and checks["/dev/shm size"]["status"] == "ok"
    assert inspect["HostConfig"]["ShmSize"] == 2 << 30     # the cpu playbook's shm_size = "2g"
    assert checks["/dev/shm size"]["detail"].startswith(f"{2 << 20} KiB")
    assert inspect["HostConfig"]["IpcMode"] != "host" and not inspect["HostConfig"]["CapAdd"]


def test_status_of_a_gpu_host_says_which_base_auto_picks_and_the_gpu_memory(laptop):
    (laptop.work / "devbox.toml").write_text(f'[hosts.{laptop.noruntime}]\ngpus = "all"\nbase_image = "auto"\n')
    rows, _ = laptop.devbox.json("status", laptop.noruntime)
    row = rows[0]
    assert row["base_image"] == "pytorch/pytorch:2.11.0-cuda13.0-cudnn9-runtime" and "sm_90" in row["base_why"]
    assert (row["gpu_memory_used_mib"], row["gpu_memory_total_mib"]) == (2575, 81559)
    text = laptop.devbox("status", laptop.noruntime).stdout
    assert "2.5/80G" in text
    dry = laptop.devbox("up", laptop.noruntime, "--dry-run")
    assert dry.returncode == 3 and "nvidia-container-toolkit" in dry.stdout, "preflight still refuses: no NVIDIA runtime"


def test_a_gpu_uuid_the_host_lacks_is_refused_naming_the_ones_it_has(laptop):
    missing = "GPU-ffffffff-0000-0000-0000-000000000000"
    (laptop.work / "devbox.toml").write_text(f'[hosts.{laptop.noruntime}]\ngpus = ["{missing}"]\nbase_image = "auto"\n'
                                             'volumes = ["workspace:/workspace"]\n')
    done = laptop.devbox("up", laptop.noruntime)
    assert done.returncode == 3 and missing in done.stdout and "GPU-46748a73-18ca-02c2-e029-6e440dca4aa4" in done.stdout


def test_top_once_json_names_the_box_and_job_using_a_gpu(laptop, testbed):
    laptop.devbox.json("up", laptop.host1)
    started = laptop.devbox("run", laptop.host1, "--name", "train", "--", "sleep", "300")
    assert started.returncode == 0, started.stdout + started.stderr
    box_id = subprocess.run(["docker", "inspect", "-f", "{{.Id}}", f"devbox-{laptop.host1}"], capture_output=True, text=True).stdout.strip()
    pid = None
    for _ in range(50):
        for proc in Path("/proc").iterdir():
            try:
                if (proc.name.isdigit() and (proc / "cmdline").read_bytes() == b"sleep\x00300\x00"
                        and box_id in (proc / "cgroup").read_text()):
                    pid = int(proc.name)
            except OSError:
                continue
        if pid:
            break
        time.sleep(0.1)
    assert pid, "the job's process on the host"
    # The GPU host's nvidia-smi now reports that very process (the H100 recording, its PID replaced).
    recording = (FIXTURES / "nvidia-smi-q-h100.xml").read_text()
    (testbed.workdir / laptop.noruntime / "smi-q.xml").write_text(recording.replace("<pid>808</pid>", f"<pid>{pid}</pid>"))
    try:
        rows, _ = laptop.devbox.json("top", laptop.noruntime, "--once")
    finally:
        (testbed.workdir / laptop.noruntime / "smi-q.xml").unlink()
    (gpu,) = rows[0]["gpus"]
    assert (gpu["name"], gpu["memory_used_mib"], gpu["memory_total_mib"], gpu["temperature_c"]) == ("NVIDIA H100 80GB HBM3", 2575, 81559, 34)
    assert gpu["processes"] == [{"pid": pid, "memory_mib": 2566, "box": f"devbox-{laptop.host1}", "job": "train"}]
    text = laptop.devbox("top", laptop.noruntime, "--once").stdout
    assert "NVIDIA H100 80GB HBM3" in text and "pid 808" in text   # without the replacement: an unknown process


def test_top_on_a_host_without_a_driver_fails_that_host_only(laptop):
    rows, done = laptop.devbox.json("top", laptop.host1, laptop.noruntime, "--once", expect=3)
    by_host = {r["host"]: r for r in rows}
    assert by_host[laptop.host1]["exit_code"] == 3 and "nvidia-smi" in by_host[laptop.host1]["error"]
    assert by_host[laptop.noruntime]["exit_code"] == 0 and by_host[laptop.noruntime]["gpus"]


def test_top_refreshes_over_one_connection_per_host(laptop, monkeypatch):
    """The live table: each round one exchange per host, over the connection opened once."""
    from devbox import remote
    from devbox.commands.top import top_live
    from devbox.config import load_specs

    opened = []
    real_enter = remote.Host.__enter__
    monkeypatch.setattr(remote.Host, "__enter__", lambda self: opened.append(self.alias) or real_enter(self))
    frames: list[str] = []
    results = top_live(load_specs([laptop.noruntime]), 0.5, frames.append, rounds=3)
    assert opened == [laptop.noruntime] and len(frames) == 3
    assert all(f.startswith("\033[H\033[2J") and "NVIDIA H100 80GB HBM3" in f and "Ctrl-C" in f for f in frames)
    assert results[0].exit_code == 0 and results[0].gpus[0].memory_total_mib == 81559
