"""The Slurm test bed itself (issue 21): real slurmctld/slurmd/munged, GPUs as gres, each
node's own dockerd. These prove what the Slurm box's tests will stand on."""
from __future__ import annotations

import os
import pwd
import subprocess
import uuid
from pathlib import Path

import pytest

from devbox.testbed import BASE_IMAGE
from devbox.testbed_slurm import OTHER_USER


def batch(bed, *args: str, user: str | None = None) -> str:
    """Submit a batch job (sbatch --parsable); its id."""
    done = bed.slurm("sbatch", "--parsable", *args, **({"user": user} if user else {}))
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0]


def wait_for(condition, timeout: float = 20):
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


def out_file(bed, name: str):
    return bed.shared_dir / f"{name}-{uuid.uuid4().hex[:8]}.out"


def test_a_gpu_job_gets_slurms_gpus_and_its_nodes_own_engine(slurm_laptop):
    bed = slurm_laptop.slurm
    out = out_file(bed, "gpus")
    job = batch(bed, "--gres=gpu:2", f"--output={out}", "--wrap",
                "echo $SLURM_JOB_GPUS $SLURMD_NODENAME; docker info --format {{.DockerRootDir}}; nvidia-smi -L")
    state = bed.wait_job(job, "COMPLETED", "FAILED")
    assert state["JobState"] == "COMPLETED", out.read_text()
    node = bed.nodes[state["NodeList"]]
    lines = out.read_text().splitlines()
    assert lines[0] == f"0,1 {node.name}"
    assert lines[1] == str(node.engine.root / "data")           # the job's docker is its node's engine
    assert [line.split("UUID: ")[1].rstrip(")") for line in lines[2:]] == [g.uuid for g in node.gpus.gpus]
    other = next(n for n in bed.nodes.values() if n is not node)
    assert not {g.uuid for g in other.gpus.gpus} & {g.uuid for g in node.gpus.gpus}


def test_a_node_is_reached_only_through_the_login_and_its_engine_gives_the_gpus_asked(slurm_laptop, tmp_path):
    bed, laptop = slurm_laptop.slurm, slurm_laptop
    node = bed.nodes["node1"]
    login = laptop.ssh(laptop.hpc_login, "scontrol show node node1 -o")   # Slurm's clients work in an ssh session
    assert login.returncode == 0 and f" NodeAddr={node.address} " in login.stdout, login.stdout + login.stderr
    # As devbox will: the node's address (its NodeAddr) behind ProxyJump in the laptop's ssh config.
    laptop.ssh_config.write_text(laptop.ssh_config.read_text() + (
        f"Host {node.address}\n    ProxyJump {laptop.hpc_login}\n    User {node.sshd.user}\n"
        f"    IdentityFile {laptop.identity}\n    UserKnownHostsFile {laptop.home / '.ssh' / 'known_hosts'}\n"
        "    StrictHostKeyChecking yes\n"))
    direct = laptop.ssh(node.address, "true", extra=["-o", "ProxyJump=none", "-o", "ConnectTimeout=5"])
    assert direct.returncode == 255 and "No route to host" in direct.stderr, direct.stderr
    through = laptop.ssh(node.address, "echo $DOCKER_HOST; id -Gn; hostname -I")
    assert through.returncode == 0, through.stderr
    docker_host, groups, addresses = through.stdout.splitlines()
    assert (docker_host, "docker" in groups.split(), node.address in addresses.split()) == (node.engine.docker_host, True, True)
    # docker -H ssh:// runs `ssh` from PATH, which reads the passwd HOME's config: give it the laptop's.
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "ssh").write_text(f'#!/bin/sh\nexec /usr/bin/ssh -F {laptop.ssh_config} "$@"\n')
    (shim / "ssh").chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}"}
    name = f"slurm-bed-{uuid.uuid4().hex[:8]}"
    docker = ["docker", "-H", f"ssh://{node.sshd.user}@{node.address}"]
    run = subprocess.run([*docker, "run", "-d", "--name", name, "--gpus", '"device=2,3"', BASE_IMAGE, "sleep", "300"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr
    assert node.gpus.visible_devices(name) == "2,3"
    smi = subprocess.run([*docker, "exec", name, "nvidia-smi", "-L"], capture_output=True, text=True, timeout=60, env=env)
    assert smi.returncode == 0, smi.stderr
    assert [line.split("UUID: ")[1].rstrip(")") for line in smi.stdout.splitlines()] == [g.uuid for g in node.gpus.gpus[2:]]
    assert node.engine.docker("ps", "-q", "--filter", f"name={name}").stdout.strip()   # on node1's engine...
    assert not bed.nodes["node2"].engine.docker("ps", "-aq").stdout.strip()            # ...and no other


def test_a_job_waits_for_resources_while_the_gpus_are_held_and_starts_when_freed(slurm_laptop):
    bed = slurm_laptop.slurm
    holders = [batch(bed, "--gres=gpu:3", "--output=/dev/null", "--wrap", "sleep 300") for _ in bed.nodes]
    held = [bed.wait_job(job, "RUNNING") for job in holders]
    assert sorted(h["NodeList"] for h in held) == sorted(bed.nodes)   # 3 of 4 held on each node
    detail = bed.slurm("scontrol", "show", "job", "-d", holders[0]).stdout
    assert f"Nodes={held[0]['NodeList']} CPU_IDs=0 Mem=0 GRES=gpu:h200:3(IDX:0-2)" in detail   # the global indices
    waiting = batch(bed, "--gres=gpu:2", "--output=/dev/null", "--wrap", "sleep 300")
    assert bed.wait_job(waiting, "PENDING", reason="Resources", timeout=20)["JobState"] == "PENDING"
    assert bed.slurm("scancel", holders[0]).returncode == 0
    assert bed.wait_job(waiting, "RUNNING", timeout=30)["NodeList"] == held[0]["NodeList"]


def test_scancel_ends_a_running_job(slurm_laptop):
    bed = slurm_laptop.slurm
    marker = f"sleep 300.{uuid.uuid4().int % 10**9}"   # a command line of this run's own
    job = batch(bed, "--gres=gpu:1", "--output=/dev/null", "--wrap", marker)
    bed.wait_job(job, "RUNNING")   # allocated: the script starts a moment later
    wait_for(lambda: subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0)
    assert bed.slurm("scancel", job).returncode == 0
    assert bed.wait_job(job, "CANCELLED", timeout=20)["JobState"] == "CANCELLED"
    assert subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 1   # the job's processes died


def test_a_container_a_job_starts_outlives_scancel_unless_the_job_removes_it(slurm_laptop):
    """proctrack/linuxproc follows parent pids: dockerd's containers (and double forks) are not
    the job's, so scancel leaves them; a TERM trap in the job's script is what removes them."""
    bed = slurm_laptop.slurm
    run = uuid.uuid4().hex[:8]
    escaper = f"sleep 601.{uuid.uuid4().int % 10**9}"   # a double fork of this run's own
    scripts = {
        "left": f"docker run -d --name left-{run} {BASE_IMAGE} sleep 600\n( {escaper} & )\nsleep 602\n",
        "trapped": f"docker run -d --name trapped-{run} {BASE_IMAGE} sleep 600\n"
                   f"trap 'docker rm -f trapped-{run}; exit 0' TERM\nsleep 603 & wait\n",
    }
    jobs = {}
    for name, body in scripts.items():
        script = bed.shared_dir / f"{name}-{run}.sh"
        script.write_text("#!/bin/bash\n" + body)
        jobs[name] = batch(bed, "--gres=gpu:3", "--output=/dev/null", str(script))
    nodes = {name: bed.nodes[bed.wait_job(job, "RUNNING")["NodeList"]] for name, job in jobs.items()}
    for name in jobs:   # running before the cancel
        wait_for(lambda: nodes[name].engine.docker("ps", "-q", "--filter", f"name={name}-{run}").stdout.strip())
    wait_for(lambda: subprocess.run(["pgrep", "-f", escaper], capture_output=True).returncode == 0)
    assert bed.slurm("scancel", *jobs.values()).returncode == 0
    for job in jobs.values():
        bed.wait_job(job, "CANCELLED", timeout=20)
    wait_for(lambda: not nodes["trapped"].engine.docker("ps", "-aq", "--filter", f"name=trapped-{run}").stdout.strip())
    assert nodes["left"].engine.docker("ps", "-q", "--filter", f"name=left-{run}").stdout.strip()
    escaped = subprocess.run(["pgrep", "-f", escaper], capture_output=True, text=True).stdout.split()
    assert escaped
    subprocess.run(["kill", *escaped])


# What Slurm 22.05 itself says to bad requests (EnforcePartLimits=ALL, no slurmdbd), recorded here:
# a DOWN partition and an unknown account on an open partition are NOT refused by Slurm.
REFUSED = {
    "inactive partition": (["-p", "inactive"], "allocation failure: Required partition not available (inactive or drain)"),
    "time over MaxTime": (["--time=3:00:00"], "allocation failure: Requested time limit is invalid (missing or exceeds some limit)"),
    "account not allowed": (["-p", "acct", "--account=nosuch"],
                            "allocation failure: Invalid account or account/partition combination specified"),
    "no such partition": (["-p", "nosuch"], "sbatch: error: invalid partition specified: nosuch\n"
                                             "allocation failure: Invalid partition name specified"),
    "more GPUs than a node has": (["--gres=gpu:5"], "allocation failure: Requested node configuration is not available"),
}


def test_sbatch_test_only_refuses_what_slurm_refuses_and_queues_a_down_partition(slurm_laptop):
    bed = slurm_laptop.slurm
    for what, (args, message) in REFUSED.items():
        done = bed.slurm("sbatch", "--test-only", *args, "--wrap", "true")
        assert (done.returncode, done.stderr.strip()) == (1, message), what
    for args in (["-p", "down"], ["--account=nosuch"]):   # "would start": Slurm does not look at State or accounts here
        done = bed.slurm("sbatch", "--test-only", *args, "--wrap", "true")
        assert done.returncode == 0 and " to start at " in done.stderr, (args, done.stderr)
    job = batch(bed, "-p", "down", "--output=/dev/null", "--wrap", "true")   # submitted, then waits for the partition
    assert bed.wait_job(job, "PENDING", reason="PartitionDown", timeout=20)
    assert "gpu*|up|2:00:00|gpu:h200:4|2|idle" in bed.slurm("sinfo", "-h", "-o", "%P|%a|%l|%G|%D|%T").stdout.splitlines()


def test_another_users_job_gets_gpus_but_not_the_nodes_docker(slurm_laptop):
    bed = slurm_laptop.slurm
    out = out_file(bed, "other")
    job = batch(bed, "--gres=gpu:1", f"--output={out}", "--wrap", "id -un; echo $SLURM_JOB_GPUS; docker ps",
                user=OTHER_USER)
    state = bed.wait_job(job, "COMPLETED", "FAILED")
    assert out.stat().st_uid == pwd.getpwnam(OTHER_USER).pw_uid
    lines = out.read_text().splitlines()
    assert lines[:2] == [OTHER_USER, "0"], lines
    assert state["JobState"] == "FAILED"                      # docker ps, its last command, failed...
    assert "permission denied while trying to connect to the Docker daemon socket" in "\n".join(lines[2:])
    assert bed.nodes[state["NodeList"]].engine.docker_host.removeprefix("unix://") in "\n".join(lines[2:])


BED_THEN_HANG = """
import json, sys, time
from pathlib import Path
from devbox.testbed_slurm import start_slurm_bed
bed = start_slurm_bed(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], [])
job = bed.slurm("sbatch", "--parsable", "--gres=gpu:1", "--output=/dev/null", "--wrap", "sleep 600").stdout.strip()
bed.wait_job(job, "RUNNING")
print(json.dumps({"netns": bed.net.netns, "routes": bed.net.routes, "links": bed.net.links}), flush=True)
if sys.argv[4] == "stop":
    sys.stdin.readline()
    bed.stop()
    print("stopped", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("end", ["stop", "SIGKILL"])
def test_a_slurm_bed_leaves_nothing_after_stop_or_after_its_killed_run_is_swept(testbed, end):
    """Running: slurmctld, slurmd, munged, dockerds, sshds and a job. stop() undoes all of it; after a
    SIGKILL (no finalizer runs) the record the bed wrote before making anything lets the next
    run's sweep_dead_beds do the same, mounts included."""
    import json
    import sys

    import devbox.testbed as tb

    workdir = testbed.workdir / f"{end[:4].lower()}-{uuid.uuid4().hex[:6]}"   # short: sockets live under it
    tag = "k" + uuid.uuid4().hex[:5]
    run = subprocess.Popen([sys.executable, "-c", BED_THEN_HANG, str(workdir), str(testbed.workdir / "authorized_keys"), tag, end],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(tb.FIXTURES.parent.parent))
    try:
        made = json.loads(run.stdout.readline())

        def running() -> dict[str, str]:
            pids = [pid for ns in made["netns"] for pid in tb._ip("netns", "pids", ns).stdout.split()]
            return {pid: subprocess.run(["ps", "-o", "comm=", "-p", pid], capture_output=True, text=True).stdout.strip()
                    for pid in pids}
        wanted = {"slurmctld", "slurmd", "slurmstepd", "munged", "dockerd", "sshd", "sleep"}
        wait_for(lambda: wanted <= set(running().values()))   # the job's script starts just after RUNNING
        pids = list(running())
        if end == "stop":
            run.stdin.write("\n")
            run.stdin.flush()
            assert run.stdout.readline() == "stopped\n"
    finally:
        run.kill()
        run.wait()
    if end == "SIGKILL":
        assert tag in tb.sweep_dead_beds()
    assert not [pid for pid in pids if tb._alive(int(pid))]
    assert not set(made["netns"]) & set(tb._ip("netns", "list").stdout.split())
    assert not [link for link in made["links"] if link in tb._ip("link").stdout]
    assert not [route for route in made["routes"] if route in tb._ip("route").stdout]
    assert str(workdir) not in Path("/proc/self/mountinfo").read_text() and not workdir.exists()
    assert not (tb.BEDS_DIR / f"{tag}.json").exists()
