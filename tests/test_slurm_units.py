"""The pure half of Slurm boxes (devbox/slurm.py, the config's slurm table, the spec on a node)."""
from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from devbox.boxid import BoxId
from devbox.config import BoxSpec, Volume, load_spec
from devbox.errors import ConfigError
from devbox.plan import run_args, volume_names, data_folders_step, shared_volume_names
from devbox.slurm import (SlurmSpec, format_time, gpu_count, job_gpus, job_script, parse_index_list, parse_record, parse_slurm_table,
                          parse_squeue, parse_time, partition_problems, sbatch_argv)

SLURM = SlurmSpec("hpc-login", "gpu", 2, "8:00:00", "/shared/devbox")


@pytest.mark.parametrize("text, seconds", [("90", 5400), ("1:30", 90), ("8:00:00", 28800), ("1-00:00:00", 86400),
                                           ("2-12", 216000), ("1-2:30", 95400), (" 0:01:00 ", 60)])
def test_slurm_time_formats(text, seconds):
    assert parse_time(text) == seconds


@pytest.mark.parametrize("text", ["", "8h", "1:2:3:4", "-1", "1-", "abc", "8:00:00; rm -rf /"])
def test_bad_slurm_times_are_refused(text):
    with pytest.raises(ValueError):
        parse_time(text)


def test_format_time_round_trips():
    for seconds in (60, 3599, 28800, 90061):
        assert parse_time(format_time(seconds)) == seconds


def test_the_slurm_table_is_checked_key_by_key():
    good = {"login": "hpc-login", "partition": "gpu", "gpus": 2, "time": "8:00:00", "shared_dir": "/shared/devbox/"}
    assert parse_slurm_table(good, "x") == SlurmSpec("hpc-login", "gpu", 2, "8:00:00", "/shared/devbox")
    for bad, said in [({**good, "gpus": 0}, "slurm.gpus"), ({**good, "gpus": True}, "slurm.gpus"), ({**good, "gpus": "2"}, "slurm.gpus"),
                      ({**good, "time": "30s"}, "slurm.time"), ({**good, "time": "0:00:30"}, "slurm.time"),
                      ({**good, "shared_dir": "shared"}, "slurm.shared_dir"), ({**good, "shared_dir": "/a/../etc"}, "slurm.shared_dir"),
                      ({**good, "shared_dir": "/a b"}, "slurm.shared_dir"), ({**good, "partition": "-p gpu"}, "slurm.partition"),
                      ({**good, "account": "x;id"}, "slurm.account"), ({**good, "exclude": "node1 --wrap=x"}, "slurm.exclude"),
                      ({**good, "nodes": 2}, "slurm.nodes"), ({k: v for k, v in good.items() if k != "login"}, "slurm.login"),
                      ("gpu", "'slurm' must be a table")]:
        with pytest.raises(ConfigError) as caught:
            parse_slurm_table(bad, "devbox.toml [boxes.a]")
        assert said in caught.value.message and caught.value.remedy


def test_sbatch_holds_the_gpus_with_a_time_limit_no_requeue_and_a_warning_before_the_end():
    argv = sbatch_argv(SlurmSpec("l", "gpu", 2, "8:00:00", "/s", gpu_type="h200", account="ml", exclude="node1"), BoxId("l", "alice"), "/s/alice")
    text = " ".join(argv)
    assert argv[:2] == ["sbatch", "--parsable"]
    for part in ("--job-name devbox-alice", "--partition gpu", "--gres gpu:h200:2", "--time 8:00:00", "--no-requeue",
                 "--signal=B:TERM@120", "--account ml", "--exclude node1", "--output /s/alice/slurm-%j.out"):
        assert part in text
    assert "--test-only" not in text
    short = sbatch_argv(SlurmSpec("l", "gpu", 1, "0:05:00", "/s"), BoxId("l", "a"), "/s/a", test_only=True)
    assert "--gres" in short and "gpu:1" in short and short[-1] == "--test-only"
    assert not any(a.startswith("--signal") for a in short)   # Slurm may signal up to a minute early: not on a 5-minute job


def test_the_job_script_is_valid_sh_and_names_only_the_box_s_own_objects(tmp_path):
    script = job_script(BoxId("l", "alice"), "/shared/devbox/alice")
    (tmp_path / "job.sh").write_text(script)
    assert subprocess.run(["sh", "-n", str(tmp_path / "job.sh")]).returncode == 0
    for name in ("devbox-alice", "devbox-alice.keys", "devbox-alice.secrets", "devbox-alice.net", "/shared/devbox/alice/slurm-ended"):
        assert name in script
    assert "rm -rf" not in script and "volume rm devbox-alice-" not in script   # data is never the job's to delete


def _fake_docker(tmp_path: Path, answers: list[str]) -> Path:
    """A `docker` whose inspect answers come from a list (one per call), recording every call."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "answers").write_text("\n".join(answers) + "\n")
    (bin_dir / "docker").write_text(textwrap.dedent(f"""\
        #!/bin/sh
        echo "$*" >> {tmp_path}/calls
        case "$1" in inspect) ;; *) exit 0;; esac
        case "$*" in *ExitCode*) echo 0; exit 0;; esac
        line=$(head -n 1 {tmp_path}/answers); sed -i 1d {tmp_path}/answers
        [ -n "$line" ] && [ "$line" != gone ] && echo "$line"
        exit 0
        """))
    (bin_dir / "docker").chmod(0o755)
    (bin_dir / "sleep").write_text("#!/bin/sh\nexit 0\n")     # the script's naps, instant
    (bin_dir / "sleep").chmod(0o755)
    return bin_dir


def _run_job(tmp_path: Path, answers: list[str], grace: int = 900) -> tuple[str, str]:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "job.sh").write_text(job_script(BoxId("l", "alice"), str(root), grace))
    bin_dir = _fake_docker(tmp_path, answers)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_JOB_ID": "42", "SLURM_JOB_GPUS": "0,1", "SLURMD_NODENAME": "node1"}
    subprocess.run(["sh", str(tmp_path / "job.sh")], env=env, check=True, timeout=30, capture_output=True)
    return (root / "slurm-ended").read_text(), (tmp_path / "calls").read_text()


def test_the_job_ends_when_its_box_stops_and_cleans_the_node(tmp_path):
    # not yet, then running as ours, then a moment gone (a swap), back, then gone for good
    ended, calls = _run_job(tmp_path, ["gone", "true 42", "true 42", "gone", "true 42", "gone", "false 42", "gone"])
    assert ended.startswith("42\t") and "the box stopped" in ended
    assert "rm --force devbox-alice devbox-alice.next devbox-alice.old" in calls
    assert "volume rm devbox-alice.keys devbox-alice.secrets" in calls and "network rm devbox-alice.net" in calls


def test_a_box_of_another_job_does_not_keep_the_job(tmp_path):
    ended, _ = _run_job(tmp_path, ["true 41"] * 5, grace=6)    # an earlier job's box, never this job's
    assert "no box was started within 6 s" in ended


def test_scontrol_records_and_gres_indices():
    record = parse_record("PartitionName=gpu AllowGroups=ALL MaxTime=02:00:00 State=UP Nodes=node[1-2] WorkDir=/a b/c Comment=(null)")
    assert record["MaxTime"] == "02:00:00" and record["State"] == "UP" and record["WorkDir"] == "/a b/c"
    detail = ("JobId=7 JobName=devbox-a\n   Nodes=node1 CPU_IDs=0 Mem=0 GRES=gpu:h200:2(IDX:1,3)\n"
              "   Nodes=node2 CPU_IDs=0 Mem=0 GRES=gpu(IDX:0-1)\n")
    assert job_gpus(detail) == (0, 1, 3)
    assert job_gpus("JobId=7 TresPerNode=gres:gpu:2") == ()
    assert parse_index_list("0-2,5") == (0, 1, 2, 5)


def test_squeue_lines():
    jobs = parse_squeue("12|PENDING|Resources|(null)|8:00:00|gpu\n13|RUNNING|None|node2|7:59:01|gpu\ngarbage\n")
    assert [(j.id, j.state, j.reason, j.node) for j in jobs] == [("12", "PENDING", "Resources", ""), ("13", "RUNNING", "", "node2")]
    assert jobs[0].queued and jobs[1].running


def test_partition_problems_name_each_refusal():
    up = {"PartitionName": "gpu", "State": "UP", "MaxTime": "2:00:00"}
    assert partition_problems(up, ["gpu:h200:4"], SlurmSpec("l", "gpu", 2, "1:00:00", "/s")) == []
    assert "is DOWN" in partition_problems({**up, "State": "DOWN"}, ["gpu:h200:4"], SlurmSpec("l", "gpu", 2, "1:00:00", "/s"))[0]
    assert "over partition gpu's limit 2:00:00" in partition_problems(up, ["gpu:h200:4"], SlurmSpec("l", "gpu", 2, "8:00:00", "/s"))[0]
    assert "has no GPUs" in partition_problems(up, ["(null)"], SlurmSpec("l", "gpu", 2, "1:00:00", "/s"))[0]
    assert "has no a100 GPUs" in partition_problems(up, ["gpu:h200:4"], SlurmSpec("l", "gpu", 2, "1:00:00", "/s", gpu_type="a100"))[0]
    assert "at most 4" in partition_problems(up, ["gpu:h200:4"], SlurmSpec("l", "gpu", 8, "1:00:00", "/s"))[0]
    assert partition_problems({**up, "MaxTime": "UNLIMITED"}, ["gpu:4(S:0-1)"], SlurmSpec("l", "gpu", 4, "9-00:00:00", "/s")) == []


def test_gpu_count_of_mixed_gres():
    assert gpu_count("gpu:h200:4(S:0-1),gpu:a100:2") == 6
    assert gpu_count("gpu:h200:4(S:0-1),gpu:a100:2", "a100") == 2
    assert gpu_count("mps:100,gpu:2") == 2


def _config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "devbox.toml"
    path.write_text(textwrap.dedent(body))
    return path


SLURM_BOX = """
[boxes.alice-hpc]
owner = "alice"
slurm = { login = "hpc-login", partition = "gpu", gpus = 2, time = "8:00:00", shared_dir = "/shared/devbox" }
"""


def test_a_slurm_box_in_devbox_toml(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    spec = load_spec("alice-hpc", _config(tmp_path, SLURM_BOX))
    assert spec.slurm == SLURM and spec.host == "hpc-login" and spec.data_root == "/shared/devbox/alice-hpc"
    assert spec.owner == "alice" and spec.box.container == "devbox-alice-hpc"
    for extra, said in [('host = "gpu-1"', "has no 'host'"), ('gpus = 2', "GPUs are its job's"), ('expose = "all"', "127.0.0.1 only")]:
        with pytest.raises(ConfigError) as caught:
            load_spec("alice-hpc", _config(tmp_path, SLURM_BOX + extra + "\n"))
        assert said in caught.value.message


def test_a_box_on_shared_storage_mounts_folders_not_volumes():
    spec = BoxSpec("devbox-node.a", name="a", owner="a", data_root="/shared/devbox/a", gpus=(1, 3), uid=1234, gid=1234,
                   volumes=(Volume("workspace", "/workspace"), Volume("hf", "/home/dev/.cache/hf", shared=True)))
    assert volume_names(spec) == ["devbox-a.keys", "devbox-a.secrets"]      # Docker volumes: only keys and secrets
    assert shared_volume_names(spec) == []
    from devbox.facts import Facts

    args = " ".join(run_args(spec, Facts(), 2222, "devbox-ssh:x", {}))
    assert "type=bind,source=/shared/devbox/a/home,target=/home/dev" in args
    assert "type=bind,source=/shared/devbox/a/workspace,target=/workspace" in args
    assert "type=bind,source=/shared/devbox/.shared/hf,target=/home/dev/.cache/hf" in args
    assert "type=volume,source=devbox-a.keys" in args
    step = data_folders_step(spec, "devbox-ssh:x")
    assert "chmod 700 /shared/devbox/a" in step.script and "/mnt/devbox-home" in step.script


def test_the_job_id_is_in_the_spec_hash_only_when_set():
    plain = BoxSpec("h")
    assert plain.spec_hash(2222, "t") == BoxSpec("h", slurm=SLURM).spec_hash(2222, "t")
    assert BoxSpec("h", slurm_job="7").spec_hash(2222, "t") != BoxSpec("h", slurm_job="8").spec_hash(2222, "t")
