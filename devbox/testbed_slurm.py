"""A real Slurm cluster on this machine (issue 21's test bed): a login node and two GPU
compute nodes, each a network namespace of its own, scheduled by real slurmctld/slurmd.

    laptop (root ns) P.1 --veth-- P.2 login (sshd, slurmctld, munged)
                                  P.5 --veth-- P.6 node1 (sshd, slurmd, dockerd, 4 fake H200s)
                                  P.9 --veth-- P.10 node2 (the same, other GPUs)

The laptop has `unreachable` routes for the node links: only a ProxyJump through the
login node reaches a node's sshd, as on a cluster. All daemons run as plain processes
(Debian's slurm-wlm 22.05 and munge 0.5.15, no systemd), each with its files under the
bed's workdir, so several beds (and the machine's own services) never meet:

- One munged (as the `munge` user, its own key and socket); slurm.conf's
  `AuthInfo=socket=` points every Slurm program at it.
- slurm.conf and gres.conf in <workdir>/etc; clients find them through SLURM_CONF (set
  by the sshds' SetEnv for ssh sessions; a job inherits it from sbatch).
- Each node's GPUs are gres `File=` lines on distinct files (Slurm takes the index from
  the trailing digits; AutoDetect=off), and its dockerd runs boxes with `--gpus` through
  the fake NVIDIA hook (devbox/testbed.py "A host with GPUs to share"). The TaskProlog
  hands a job its node's DOCKER_HOST and nvidia-smi, as a real node's environment would.
- <workdir>/shared is the cluster's shared storage (mode 1777, like a /scratch): same
  files on the login node and every node.
- ProctrackType=proctrack/linuxproc (no cgroups needed): a container a job starts
  through dockerd is not the job's process, so `scancel` does not reach it (a real
  cluster's proctrack/cgroup does not either: dockerd's children live in dockerd's cgroup).
"""
from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from devbox.testbed import (OPS_USER, FakeHost, GpuBed, NetnsEngine, SeparateBed, _free_subnet, _ip, ensure_user,
                            h200_gpus, in_netns, plant_gpus, seed, sweep_dead_beds)

OTHER_USER = "devbox-other"   # a cluster user with no docker group: "a plain sbatch job by another user"
NODES = {"node1": ("a", 4), "node2": ("b", 8)}  # name: (veth suffix, last octet of the link's /30)
GPUS_PER_NODE = 4
PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass
class Node:
    """One compute node: its sshd, its engine and GPUs (a GpuBed: .engine, .gpus,
    .visible_devices(container), .smi(...))."""

    name: str
    address: str
    sshd: FakeHost
    gpus: GpuBed

    @property
    def engine(self) -> NetnsEngine:
        return self.gpus.engine


@dataclass
class SlurmBed:
    """The cluster; everything made is recorded as it is made (see SeparateBed), so stop()
    undoes exactly that and sweep_dead_beds undoes a killed run's."""

    workdir: Path
    net: SeparateBed
    nodes: dict[str, Node] = field(default_factory=dict)
    daemons: list[subprocess.Popen] = field(default_factory=list)

    @property
    def login(self) -> FakeHost:
        return self.net.hosts["login"]

    @property
    def etc(self) -> Path:
        return self.workdir / "etc"

    @property
    def slurm_conf(self) -> Path:
        return self.etc / "slurm.conf"

    @property
    def shared_dir(self) -> Path:
        return self.workdir / "shared"

    @property
    def munge_socket(self) -> Path:
        return self.workdir / "munge" / "munge.socket"

    @property
    def log_dir(self) -> Path:
        return self.workdir / "log"

    def slurm(self, *argv: str, user: str = OPS_USER, timeout: float = 60) -> subprocess.CompletedProcess:
        """A Slurm client command (sbatch, squeue, scontrol, ...) on the login node as `user`."""
        env = {"PATH": PATH, "SLURM_CONF": str(self.slurm_conf), "HOME": f"/home/{user}", "USER": user, "LANG": "C.UTF-8"}
        return subprocess.run(in_netns(self.net.netns_name("login"), ["/usr/sbin/runuser", "-u", user, "--", *argv]),
                              capture_output=True, text=True, timeout=timeout, env=env, cwd="/")

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job -o` as a dict (JobState, Reason, NodeList, ...); {} once forgotten."""
        text = self.slurm("scontrol", "show", "job", "-o", job_id).stdout
        return dict(item.split("=", 1) for item in text.split() if "=" in item)

    def wait_job(self, job_id: str, *states: str, reason: str = "", timeout: float = 60) -> dict[str, str]:
        """The job once its JobState is one of `states` (and its Reason `reason`, if given)."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job.get("JobState") in states and job.get("Reason") == (reason or job.get("Reason")):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} not {'/'.join(states)} {reason} after {timeout:.0f}s: {job}")
            time.sleep(0.2)

    def reset(self) -> None:
        """No job left, no container on a node, every GPU idle (between tests)."""
        for user in (OPS_USER, OTHER_USER):
            self.slurm("scancel", "-u", user, user="root")
        for node in self.nodes.values():
            node.gpus.reset()
        deadline = time.monotonic() + 30
        while self.slurm("squeue", "-h", "-t", "PD,R,CG", "-o", "%i", user="root").stdout.strip():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Slurm bed's jobs did not end: {self.slurm('squeue', user='root').stdout}")
            time.sleep(0.2)

    def ssh_config_block(self, identity: Path, known_hosts: Path, login_alias: str) -> str:
        """The laptop's entry for the login node; nodes get none (devbox reaches a node's
        NodeAddr with `ProxyJump <login alias>`)."""
        return self.login.config_block(identity, known_hosts, login_alias)

    def known_hosts_lines(self) -> str:
        """The login's and every node's host key by address, as a cluster admin publishes them."""
        return "".join(h.host_key_line() + "\n" for h in (self.login, *(n.sshd for n in self.nodes.values())))

    def stop(self) -> None:
        """Slurm and munge first (a job's end is logged), then the namespaces and all in them."""
        for process in reversed(self.daemons):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
        self.net.stop()


def slurm_unavailable_reason() -> str | None:
    """Why a Slurm bed cannot start here (scripts/testbed-prereqs.sh installs what is missing)."""
    for program in ("slurmctld", "slurmd", "sbatch", "munged", "nsenter"):
        if not shutil.which(program) and not Path(f"/usr/sbin/{program}").exists():
            return f"{program} is not installed (scripts/testbed-prereqs.sh installs slurm-wlm and munge)"
    return None


def start_slurm_bed(workdir: Path, authorized: Path, tag: str, seed_images: list[str]) -> SlurmBed:
    """The cluster, ready: nodes idle, engines seeded with `seed_images`. `tag` (6 characters)
    names its namespaces and links; `authorized` is every sshd's authorized_keys."""
    longest = workdir / "engines" / max(NODES, key=len) / "exec/containerd/containerd.sock.ttrpc"
    if len(str(longest)) > 103:   # found: 105 makes dockerd time out dialling its containerd, 103 works
        raise ValueError(f"{workdir}: too long a path for the node engines' sockets ({longest})")
    workdir.mkdir(mode=0o755, parents=True)
    sweep_dead_beds()
    net = SeparateBed(workdir, tag)
    bed = SlurmBed(workdir, net)
    try:
        ensure_user(OPS_USER, docker_group=True)
        ensure_user(OTHER_USER, docker_group=False)
        prefix = net.prefix = _free_subnet()
        net.record(roles=("login", *NODES), links=("l", *(s for s, _ in NODES.values())),
                   routes=tuple(f".{octet}/30" for _, octet in NODES.values()),
                   engines={name: f"engines/{name}" for name in NODES})
        login = net.add_netns("login")
        net.add_link(None, f"{prefix}.1", login, f"{prefix}.2", "l")
        for name, (suffix, octet) in NODES.items():
            node_ns = net.add_netns(name)
            net.add_link(login, f"{prefix}.{octet + 1}", node_ns, f"{prefix}.{octet + 2}", suffix)
            _ip("-n", node_ns, "route", "add", "default", "via", f"{prefix}.{octet + 1}")
            _ip("route", "add", "unreachable", f"{prefix}.{octet}/30")
            net.routes.append(f"{prefix}.{octet}/30")
        _prepare_dirs(bed)
        gpus = {name: _plant_node(bed, name) for name in NODES}
        with ThreadPoolExecutor(len(gpus)) as pool:   # two dockerds start in the time of one...
            list(pool.map(lambda g: g.engine.start([]), gpus.values()))
        seed([g.engine.docker_host for g in gpus.values()], seed_images)   # ...and load one save
        _write_config(bed, prefix, gpus)
        _start_munged(bed)
        bed.net.start_sshd("login", login, f"{prefix}.2", authorized, f"SetEnv SLURM_CONF={bed.slurm_conf} PATH={PATH}\n")
        for name, gpu_bed in gpus.items():
            octet = NODES[name][1]
            env = f"SetEnv SLURM_CONF={bed.slurm_conf} DOCKER_HOST={gpu_bed.engine.docker_host} PATH={gpu_bed.smi_bin}:{PATH}\n"
            gpu_bed.host = net.start_sshd(name, net.netns_name(name), f"{prefix}.{octet + 2}", authorized, env)
            bed.nodes[name] = Node(name, f"{prefix}.{octet + 2}", gpu_bed.host, gpu_bed)
        _start_slurm(bed)
    except BaseException:
        bed.stop()
        raise
    return bed


def _prepare_dirs(bed: SlurmBed) -> None:
    for sub in ("etc", "state", "run", "log", "engines", *(f"spool/{name}" for name in NODES)):
        (bed.workdir / sub).mkdir(mode=0o755, parents=True)
    bed.shared_dir.mkdir()
    bed.shared_dir.chmod(0o1777)   # as a cluster's /scratch: every user makes their own folders there


def _plant_node(bed: SlurmBed, name: str) -> GpuBed:
    """A node's GPUs (their gres device files, nvidia-smi, the hook) and its engine, not started."""
    root = bed.workdir / "engines" / name
    root.mkdir(mode=0o755, parents=True)
    gpus = GpuBed(root, h200_gpus(GPUS_PER_NODE, host=f"{bed.net.tag}-{name}"))
    hook_dir, runtime_args = plant_gpus(gpus)
    (root / "dev").mkdir(mode=0o755)
    for gpu in gpus.gpus:   # Slurm wants a device (NVIDIA's major 195; no driver here: opening one fails)
        os.mknod(root / "dev" / f"nvidia{gpu.index}", 0o600 | stat.S_IFCHR, os.makedev(195, gpu.index))
    gpus.engine = bed.net.engines[name] = NetnsEngine(root, root / "docker.sock", "", netns=bed.net.netns_name(name),
                                                      extra_args=runtime_args, path_prefix=hook_dir)
    return gpus


def _write_config(bed: SlurmBed, prefix: str, gpus: dict[str, GpuBed]) -> None:
    """slurm.conf, gres.conf (found beside it) and the TaskProlog."""
    wd, nodes = bed.workdir, ",".join(NODES)
    prolog = wd / "etc" / "task-prolog.sh"
    cases = "".join(f"{name}) echo export DOCKER_HOST={g.engine.docker_host}; echo \"export PATH={g.smi_bin}:$PATH\";;\n"
                    for name, g in gpus.items())
    prolog.write_text("#!/bin/sh\n# Slurm runs this as the job's user before the job; `export` lines go into its env:\n"
                      f"# a job's docker and nvidia-smi are its node's.\ncase \"$SLURMD_NODENAME\" in\n{cases}esac\n")
    prolog.chmod(0o755)
    node_lines = "".join(f"NodeName={name} NodeAddr={prefix}.{octet + 2} CPUs=8 RealMemory=4000 "
                         f"Gres=gpu:h200:{GPUS_PER_NODE} State=UNKNOWN\n" for name, (_, octet) in NODES.items())
    bed.slurm_conf.write_text(
        f"# The devbox Slurm test bed (devbox/testbed_slurm.py).\nClusterName=devbox{bed.net.tag}\n"
        # slurmctld runs only where its name is this machine's hostname (namespaces share the UTS one)
        f"SlurmctldHost={socket.gethostname().split('.')[0]}({prefix}.2)\n"
        f"AuthType=auth/munge\nCredType=cred/munge\nAuthInfo=socket={bed.munge_socket}\n"
        f"SlurmUser=root\nSlurmdUser=root\nStateSaveLocation={wd}/state\nSlurmdSpoolDir={wd}/spool/%n\n"
        f"SlurmctldPidFile={wd}/run/slurmctld.pid\nSlurmdPidFile={wd}/run/slurmd-%n.pid\n"
        f"SlurmctldLogFile={wd}/log/slurmctld.log\nSlurmdLogFile={wd}/log/slurmd-%n.log\n"
        "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nJobAcctGatherType=jobacct_gather/none\n"
        "AccountingStorageType=accounting_storage/none\nJobCompType=jobcomp/none\nMpiDefault=none\n"
        "SelectType=select/cons_tres\nSelectTypeParameters=CR_Core\nGresTypes=gpu\nSlurmdParameters=config_overrides\n"
        f"TaskProlog={prolog}\nKillWait=5\nMinJobAge=600\nReturnToService=2\nInactiveLimit=0\n"
        "EnforcePartLimits=ALL\nSchedulerParameters=sched_interval=2\nSlurmctldDebug=info\nSlurmdDebug=info\n"
        + node_lines +
        f"PartitionName=gpu Nodes={nodes} Default=YES MaxTime=2:00:00 State=UP\n"
        f"PartitionName=down Nodes={nodes} MaxTime=2:00:00 State=DOWN\n"
        f"PartitionName=inactive Nodes={nodes} MaxTime=2:00:00 State=INACTIVE\n"
        # without slurmdbd Slurm knows no accounts: AllowAccounts then refuses every job, `ml` too
        f"PartitionName=acct Nodes={nodes} MaxTime=2:00:00 AllowAccounts=ml State=UP\n")
    (bed.etc / "gres.conf").write_text("AutoDetect=off\n" + "".join(
        f"NodeName={name} Name=gpu Type=h200 File={g.root}/dev/nvidia[0-{GPUS_PER_NODE - 1}]\n" for name, g in gpus.items()))


def _start_munged(bed: SlurmBed) -> None:
    """The bed's own munged, as the munge user, in the login namespace (a sweep kills it there)."""
    home = bed.munge_socket.parent
    home.mkdir(mode=0o755)
    key = home / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    shutil.chown(home, "munge", "munge")
    shutil.chown(key, "munge", "munge")
    argv = ["runuser", "-u", "munge", "--", "munged", "--foreground", f"--socket={bed.munge_socket}",
            f"--key-file={key}", f"--pid-file={home / 'munged.pid'}", f"--log-file={home / 'munged.log'}",
            f"--seed-file={home / 'munged.seed'}"]
    bed.daemons.append(subprocess.Popen(in_netns(bed.net.netns_name("login"), argv), stdout=subprocess.DEVNULL,
                                        stderr=open(bed.log_dir / "munged.out", "w")))
    _wait(lambda: bed.munge_socket.is_socket(), "munged", bed.log_dir / "munged.out")


def _start_slurm(bed: SlurmBed) -> None:
    """slurmctld on the login node, a slurmd per node; ready when every node is idle."""
    env = {**os.environ, "SLURM_CONF": str(bed.slurm_conf)}
    ctld = ["slurmctld", "-D", "-i", "-f", str(bed.slurm_conf)]   # -i: no state of a previous bed
    bed.daemons.append(subprocess.Popen(in_netns(bed.net.netns_name("login"), ctld), env=env, stdout=subprocess.DEVNULL,
                                        stderr=open(bed.log_dir / "slurmctld.out", "w")))
    _wait(lambda: bed.slurm("scontrol", "ping").stdout.count("UP") > 0, "slurmctld", bed.log_dir / "slurmctld.log")
    for name in bed.nodes:
        bed.daemons.append(subprocess.Popen(in_netns(bed.net.netns_name(name), ["slurmd", "-D", "-N", name, "-f", str(bed.slurm_conf)]),
                                            env=env, stdout=subprocess.DEVNULL, stderr=open(bed.log_dir / f"slurmd-{name}.out", "w")))
    want = "".join(f"{name} idle\n" for name in bed.nodes)
    _wait(lambda: bed.slurm("sinfo", "-h", "-N", "-p", "gpu", "-o", "%N %T").stdout == want, "slurmd",
          bed.log_dir / "slurmctld.log", timeout=60)


def _wait(ready, what: str, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.1)
    tail = log.read_text()[-800:] if log.exists() else "(no log)"
    raise RuntimeError(f"{what} of the Slurm bed did not come up in {timeout:.0f}s: {tail}")


