"""Slurm boxes on a real Slurm cluster (issue 21): slurmctld and two slurmd nodes, each with
its own dockerd and 4 fake GPUs, reachable only through the login node (devbox/testbed_slurm.py).
"""
from __future__ import annotations

import json
import pwd
import signal
import subprocess
import time

import pytest

import testbed as tb
from conftest import SUFFIX

A, B, C = f"ann{SUFFIX}", f"ben{SUFFIX}", f"cat{SUFFIX}"
D = f"dan{SUFFIX}"         # a box no other test has used (its folder on shared storage is new)
GOOD = {"partition": "gpu", "time": "30"}


@pytest.fixture(scope="module", autouse=True)
def cluster_user_image(testbed):
    """The box image for the cluster user's uid and gid (a Slurm box runs as them), built
    here once: the nodes reach no package mirror, so `up` streams it (delivery = "stream")."""
    from devbox.image import ImageSpec, build_locally

    ops = pwd.getpwnam(tb.OPS_USER)
    return build_locally(ImageSpec(tb.BASE_IMAGE, uid=ops.pw_uid, gid=ops.pw_gid))


def slurm_boxes(laptop, **boxes: dict) -> None:
    """keys/ holds the laptop's key as `me`; each box is `me`'s, on the bed's cluster."""
    if not (laptop.work / "keys" / "me.pub").exists():
        assert laptop.devbox("keys", "add", "me", f"{laptop.identity}.pub").returncode == 0
    toml = laptop.work / "devbox.toml"
    text = toml.read_text().split("\n[boxes.", 1)[0]
    if "delivery" not in text:      # the nodes reach no package mirror: the image comes from here
        text = text.replace("[defaults]\n", '[defaults]\ndelivery = "stream"\n', 1)
    for name, table in boxes.items():
        slurm = {"login": laptop.hpc_login, "shared_dir": str(laptop.slurm.shared_dir), **GOOD, **table}
        fields = ", ".join(f"{k} = {json.dumps(v)}" for k, v in slurm.items())
        text += f'\n[boxes.{name}]\nowner = "me"\nslurm = {{ {fields} }}\n'
    toml.write_text(text)


def up(laptop, *args: str, expect: int | None = 0) -> dict:
    reports, done = laptop.devbox.json("up", *args, "--no-verify", expect=expect)
    return reports[0]


def node_of(laptop, report: dict):
    return laptop.slurm.nodes[report["slurm"]["node"]]


def slurm_gpus(laptop, job_id: str) -> list[int]:
    from devbox.slurm import job_gpus

    return list(job_gpus(laptop.slurm.slurm("scontrol", "show", "job", "-d", job_id).stdout))


def queue(laptop) -> str:
    return laptop.slurm.slurm("squeue", "-h", "-o", "%i %j %T %r", user="root").stdout


def containers(node) -> list[str]:
    return node.engine.docker("ps", "-a", "--format", "{{.Names}}").stdout.split()


def job_processes(job_id: str) -> list[int]:
    """Processes of this machine (every node's) whose environment names the Slurm job."""
    from pathlib import Path

    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if f"SLURM_JOB_ID={job_id}\0".encode() in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def wait_until(check, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout:.0f} s")
        time.sleep(0.5)
    return value


def test_three_boxes_two_run_on_the_jobs_own_gpus_the_third_queues_until_one_is_down(slurm_laptop):
    laptop = slurm_laptop
    slurm_boxes(laptop, **{A: {"gpus": 2}, B: {"gpus": 4}, C: {"gpus": 4}})
    first, second = up(laptop, A), up(laptop, B)
    for report in (first, second):
        assert report["error"] == "" and report["slurm"]["state"] == "RUNNING", report
        node = node_of(laptop, report)
        wanted = slurm_gpus(laptop, report["slurm"]["id"])
        assert report["slurm"]["gpus"] == wanted and len(wanted) == (2 if report is first else 4)
        container = f"devbox-{report['host']}"
        assert node.gpus.visible_devices(container) == ",".join(map(str, wanted)), "exactly the job's GPUs, by node index"
        labels = json.loads(node.engine.docker("inspect", container).stdout)[0]["Config"]["Labels"]
        assert labels["devbox.slurm.job"] == report["slurm"]["id"]
    assert first["slurm"]["node"] != second["slurm"]["node"] or set(first["slurm"]["gpus"]).isdisjoint(second["slurm"]["gpus"])
    third = up(laptop, C, "--no-wait")
    assert third["state"] == "queued" and third["exit_code"] == 0 and third["slurm"]["reason"] == "Resources", third
    text = laptop.devbox("status", C).stdout
    assert f"job {third['slurm']['id']} pending (Resources" in text and "queued" in text
    assert laptop.ssh(f"devbox-{A}", "nvidia-smi -L | wc -l").stdout.strip() == "2"
    box = json.loads(node_of(laptop, first).engine.docker("inspect", f"devbox-{A}").stdout)[0]
    assert box["HostConfig"]["CapDrop"] == ["ALL"] and box["Config"]["User"] != "0:0" and not box["HostConfig"]["Privileged"]
    assert {b["HostIp"] for bindings in box["HostConfig"]["PortBindings"].values() for b in bindings} == {"127.0.0.1"}
    entries = (laptop.home / ".ssh" / "devbox" / "config").read_text()
    node_entry = entries.split(f"Host devbox-node.{A}\n", 1)[1].split("\nHost ", 1)[0]
    assert f"ProxyJump {laptop.hpc_login}" in node_entry and "StrictHostKeyChecking yes" in node_entry
    box_entry = entries.split(f"Host devbox-{A}\n", 1)[1].split("\nHost ", 1)[0]
    assert f"ProxyJump devbox-node.{A}" in box_entry and f"HostKeyAlias devbox-{A}" in box_entry
    down = laptop.devbox("down", B)
    assert down.returncode == 0 and "Slurm job" in down.stdout, down.stdout + down.stderr
    assert B not in queue(laptop), "down gives the GPUs back: the job is gone"
    started = up(laptop, C)                    # the same job, no second one
    assert started["slurm"]["id"] == third["slurm"]["id"] and started["slurm"]["state"] == "RUNNING", started
    assert laptop.ssh(f"devbox-{C}", "nvidia-smi -L | wc -l").stdout.strip() == "4"
    rows, _ = laptop.devbox.json("status", A)
    assert rows[0]["state"] == "running" and rows[0]["slurm"]["gpus"] == first["slurm"]["gpus"] and rows[0]["slurm"]["time_left"]


def test_a_plain_job_of_another_user_never_gets_a_box_s_gpu(slurm_laptop):
    laptop = slurm_laptop
    slurm_boxes(laptop, **{A: {"gpus": 2, "exclude": "node2"}})
    report = up(laptop, A)
    mine = set(report["slurm"]["gpus"])
    out = laptop.slurm.shared_dir / f"other{SUFFIX}.out"
    job = laptop.slurm.slurm("sbatch", "--parsable", "--gres=gpu:2", "-w", "node1", "-o", str(out), "--wrap",
                             'echo "$SLURM_JOB_GPUS"', user="devbox-other")
    assert job.returncode == 0, job.stderr
    laptop.slurm.wait_job(job.stdout.strip(), "COMPLETED")
    theirs = {int(i) for i in wait_until(lambda: out.exists() and out.read_text().strip(), "written").split(",")}
    assert len(theirs) == 2 and theirs.isdisjoint(mine), (mine, theirs)
    greedy = laptop.slurm.slurm("sbatch", "--parsable", "--gres=gpu:3", "-w", "node1", "-o", "/dev/null", "--wrap", "true",
                                user="devbox-other")
    laptop.slurm.wait_job(greedy.stdout.strip(), "PENDING", reason="Resources")
    laptop.slurm.slurm("scancel", greedy.stdout.strip(), user="devbox-other")
    theirs_running = laptop.slurm.slurm("sbatch", "--parsable", "--gres=gpu:1", "-w", "node1", "-o", "/dev/null", "--wrap",
                                        "sleep 1234", user="devbox-other")
    laptop.slurm.wait_job(theirs_running.stdout.strip(), "RUNNING")
    seen = laptop.ssh(f"devbox-{A}", "ps -eo user,args; ls /proc | grep -c '^[0-9]'")
    assert seen.returncode == 0 and "sleep 1234" not in seen.stdout and "devbox-other" not in seen.stdout, seen.stdout


def test_scancel_removes_the_box_from_its_node_and_status_says_why(slurm_laptop):
    laptop = slurm_laptop
    slurm_boxes(laptop, **{A: {"gpus": 1}})
    report = up(laptop, A)
    node = node_of(laptop, report)
    assert f"devbox-{A}" in containers(node)
    laptop.slurm.slurm("scancel", report["slurm"]["id"])
    wait_until(lambda: not [c for c in containers(node) if A in c], "box removed by the job's end", 90)
    volumes = node.engine.docker("volume", "ls", "-q").stdout
    assert f"devbox-{A}.keys" not in volumes and f"devbox-{A}.secrets" not in volumes, "no keys or secrets left on the node"
    wait_until(lambda: not job_processes(report["slurm"]["id"]), "no process of the job left", 60)
    rows, _ = laptop.devbox.json("status", A)
    assert rows[0]["state"] == "absent" and "ended by Slurm" in rows[0]["slurm"]["ended"], rows
    assert (laptop.slurm.shared_dir / A / "home" / ".devbox" / "hostkeys").is_dir(), "the data stays"


def test_the_box_stopping_ends_its_job_and_gives_the_gpus_back(slurm_laptop):
    laptop = slurm_laptop
    slurm_boxes(laptop, **{A: {"gpus": 1}})
    report = up(laptop, A)
    node = node_of(laptop, report)
    node.engine.docker("stop", f"devbox-{A}")            # a crash or an idle stop
    wait_until(lambda: report["slurm"]["id"] not in queue(laptop).split(), "job ended", 90)
    assert not [c for c in containers(node) if A in c], "nothing left on the node"
    ended = (laptop.slurm.shared_dir / A / "slurm-ended").read_text()
    assert "the box stopped" in ended


def test_time_limit_ends_the_box_the_next_up_lands_on_the_other_node_with_the_same_data_and_key(slurm_laptop):
    laptop = slurm_laptop
    slurm_boxes(laptop, **{A: {"gpus": 1, "time": "1", "exclude": "node2"}})
    first = up(laptop, A)
    assert first["slurm"]["node"] == "node1"
    assert laptop.ssh(f"devbox-{A}", f"echo kept-{SUFFIX} > /workspace/note").returncode == 0
    assert laptop.devbox("run", A, "--name", "train", "--", "sleep", "600").returncode == 0
    laptop.slurm.wait_job(first["slurm"]["id"], "TIMEOUT", "COMPLETED", "CANCELLED", timeout=150)
    wait_until(lambda: not [c for c in containers(laptop.slurm.nodes["node1"]) if A in c], "box gone", 30)
    jobs = laptop.devbox.json("ps", A)[0]
    assert [(j["name"], j["state"]) for j in jobs] == [("train", "lost")], "read from shared storage while no job runs"
    assert laptop.devbox("logs", A, "train").returncode == 0
    slurm_boxes(laptop, **{A: {"gpus": 1, "time": "30", "exclude": "node1"}})
    second = up(laptop, A)
    assert second["slurm"]["node"] == "node2" and second["error"] == ""
    seen = laptop.ssh(f"devbox-{A}", "cat /workspace/note; id -u")      # StrictHostKeyChecking yes: a new key would fail
    assert seen.returncode == 0 and seen.stdout.split()[0] == f"kept-{SUFFIX}", seen.stderr
    assert seen.stdout.split()[1] == str(pwd.getpwnam(tb.OPS_USER).pw_uid), "the box runs as the cluster user: the files are theirs"
    assert laptop.devbox("verify", A).returncode in (0, 1)    # torch is not in the bed's image; the rest is checked below
    checks = {c["name"]: c["status"] for c in laptop.devbox.json("verify", A, expect=None)[0][0]["checks"]}
    torch_checks = ("torch cuda", "gpu count", "cuda matmul", "nccl all-reduce")   # the bed's image has no torch
    failed = {k: v for k, v in checks.items() if v != "ok" and k not in torch_checks}
    assert not failed and checks["nvidia-smi"] == "ok", checks


@pytest.mark.parametrize("table, said", [
    ({"partition": "nosuch"}, "partition 'nosuch' does not exist"),
    ({"partition": "down"}, "partition down is DOWN"),
    ({"time": "3:00:00"}, "over partition gpu's limit"),
    ({"partition": "acct", "account": "nosuch"}, "Slurm refuses the job: allocation failure: Invalid account"),
    ({"partition": "inactive"}, "partition inactive is INACTIVE"),
    ({"gpus": 5}, "at most 4"),
])
def test_a_request_the_cluster_cannot_run_is_refused_with_nothing_submitted(slurm_laptop, table, said):
    laptop = slurm_laptop
    slurm_boxes(laptop, **{A: {"gpus": 1, **table}})
    done = laptop.devbox("up", A)
    said_all = (done.stdout + done.stderr).strip()
    assert done.returncode == 2 and said in said_all and len(said_all.splitlines()) == 1, said_all
    assert "Traceback" not in said_all and queue(laptop) == ""


def test_queued_is_a_state_wait_runs_out_and_ctrl_c_leaves_the_job_queued(slurm_laptop):
    laptop = slurm_laptop
    hog = [laptop.slurm.slurm("sbatch", "--parsable", "--gres=gpu:4", "-w", node, "-o", "/dev/null", "--wrap", "sleep 300",
                              user="devbox-other")
           for node in ("node1", "node2")]
    for job in hog:
        laptop.slurm.wait_job(job.stdout.strip(), "RUNNING")
    slurm_boxes(laptop, **{A: {"gpus": 1}})
    waited = laptop.devbox("up", A, "--wait", "3s")
    assert waited.returncode == 3 and "queued: job" in waited.stdout and "Resources" in waited.stdout, waited.stdout + waited.stderr
    job_id = waited.stdout.split("queued: job ", 1)[1].split()[0]
    running = subprocess.Popen([*laptop.devbox.argv, "up", A], cwd=laptop.work, env=laptop.devbox.env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(4)
    running.send_signal(signal.SIGINT)
    out, err = running.communicate(timeout=30)
    assert running.returncode == 130 and f"left job {job_id} queued" in out + err and "devbox down" in out + err, out + err
    assert job_id in queue(laptop), "Ctrl-C leaves the job queued"
    down = laptop.devbox("down", A)
    assert down.returncode == 0 and job_id not in queue(laptop)


@pytest.mark.slow
def test_bench_up_to_a_working_ssh_against_doing_it_by_hand(slurm_laptop):
    """Issue 21's figure: `devbox up` to a working `ssh devbox-NAME` on an idle partition with
    the image already on the node, next to the same by hand (sbatch a sleeper, wait for
    RUNNING, `docker run` on the node): a warm-up, then 3 alternating pairs. Results go to
    bench/results/slurm.json."""
    from pathlib import Path
    from statistics import median

    laptop = slurm_laptop
    slurm_boxes(laptop, **{A: {"gpus": 1, "exclude": "node2"}})
    warm = up(laptop, A)                                   # delivers the image to node1, writes the node entry
    image = json.loads(node_of(laptop, warm).engine.docker("inspect", f"devbox-{A}").stdout)[0]["Config"]["Image"]
    assert laptop.devbox("down", A).returncode == 0
    node_alias = f"devbox-node.{A}"

    def by_devbox(*flags: str) -> float:
        began = time.monotonic()
        done = laptop.devbox("up", A, *flags)
        assert done.returncode in (0, 1), done.stdout + done.stderr       # 1: verify's torch checks (no torch here)
        assert laptop.ssh(f"devbox-{A}", "true").returncode == 0
        took = time.monotonic() - began
        assert laptop.devbox("down", A).returncode == 0
        return took

    def by_hand() -> float:
        began = time.monotonic()
        job = laptop.ssh(laptop.hpc_login, "sbatch --parsable --gres=gpu:1 -w node1 -o /dev/null --wrap 'sleep 600'").stdout.strip()
        laptop.ssh(laptop.hpc_login, f'while [ "$(squeue -h -j {job} -o %T)" != RUNNING ]; do sleep 0.2; done', timeout=120)
        gpus = slurm_gpus(laptop, job)
        ran = laptop.ssh(node_alias, f"docker run -d --name hand-{SUFFIX} --gpus '\"device={gpus[0]}\"' {image}")
        assert ran.returncode == 0, ran.stderr
        took = time.monotonic() - began
        laptop.ssh(node_alias, f"docker rm -f hand-{SUFFIX}")
        laptop.ssh(laptop.hpc_login, f"scancel {job}")
        laptop.slurm.wait_job(job, "CANCELLED", "COMPLETED")
        return took

    runs = [(by_devbox(), by_devbox("--no-verify"), by_hand()) for _ in range(3)]
    result = {}
    for i, label in enumerate(("devbox_up_verified_to_ssh_s", "devbox_up_no_verify_to_ssh_s", "by_hand_s")):
        result[label] = [round(r[i], 2) for r in runs]
        result["median_" + label] = round(median(r[i] for r in runs), 2)
    result["ratio_verified"] = round(result["median_devbox_up_verified_to_ssh_s"] / result["median_by_hand_s"], 2)
    result["ratio_no_verify"] = round(result["median_devbox_up_no_verify_to_ssh_s"] / result["median_by_hand_s"], 2)
    out = Path(__file__).resolve().parent.parent / "bench" / "results" / "slurm.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(result)


def test_two_ups_at_once_submit_one_job_and_dry_run_submits_nothing(slurm_laptop):
    laptop = slurm_laptop
    slurm_boxes(laptop, **{D: {"gpus": 1}})
    dry = laptop.devbox("up", D, "--dry-run")
    assert dry.returncode == 0 and "would submit a Slurm job" in dry.stdout and queue(laptop) == "", dry.stdout + dry.stderr
    never = laptop.devbox("down", D)
    assert never.returncode == 0 and "removed nothing" in never.stdout, never.stdout + never.stderr
    assert laptop.devbox.json("ps", D)[0] == [] and laptop.devbox("ssh", D, "--", "true").returncode != 0
    runs = [subprocess.Popen([*laptop.devbox.argv, "up", D, "--no-verify", "--json"], cwd=laptop.work, env=laptop.devbox.env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    reports = [json.loads(run.communicate(timeout=300)[0])[0] for run in runs]
    assert [r["error"] for r in reports] == ["", ""], reports
    assert reports[0]["slurm"]["id"] == reports[1]["slurm"]["id"], "one job for the box, whoever came second"
    assert [line.split()[1] for line in queue(laptop).splitlines()] == [f"devbox-{D}"]
    again = up(laptop, D)
    assert again["changed"] is False and again["slurm"]["id"] == reports[0]["slurm"]["id"], "a re-run changes nothing"
