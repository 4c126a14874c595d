"""Placing a Slurm box: ask the scheduler through the login node, then hand the rest of
devbox a box whose host is the node its job runs on.

This is the placement seam for clusters: `up` asks for (or finds) the box's job, waits
while it is queued, and once it runs turns the box's spec into an ordinary one (host: the
node, reached laptop -> login -> node; GPUs: exactly the job's, by their node-global
indices; uid/gid: the cluster user's, so files on shared storage are theirs). From there
gather -> plan -> apply -> pin -> verify is the same code as for any host. Every other
command finds the running job the same way (`locate`).
"""
from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, replace
from typing import Callable

from devbox import sshconfig
from devbox.config import BoxSpec
from devbox.errors import ConfigError, DevboxError, HostUnreachable
from devbox.remote import Host
from devbox.slurm import (SQUEUE_FORMAT, Job, format_time, job_gpus, job_name, job_script, parse_record, parse_squeue,
                          partition_problems, sbatch_argv)

Progress = Callable[[str], None]
POLL_S = 2.0
SETTLE_S = 3.0      # a job just submitted has no reason until the scheduler's first pass


class NotRunning(HostUnreachable):
    """The box's job is queued, gone, or never submitted: nothing to connect to yet."""


class LeftQueued(DevboxError):
    """Ctrl-C while the job waited: the job stays queued; exit 130 as for any interrupt."""

    exit_code = 130


@dataclass
class Cluster:
    """The scheduler as the login node shows it to the box's owner."""

    login: Host
    spec: BoxSpec

    @property
    def slurm(self):
        return self.spec.slurm

    def _run(self, argv: list[str], stdin: str | None = None):
        return self.login.run(argv, stdin=stdin.encode() if stdin is not None else None, check=False, timeout=60)

    def find_job(self) -> Job | None:
        """The box's live job (queued or running), if any: by its name, among the user's own."""
        answer = self._run(["squeue", "--me", "--noheader", "--name", job_name(self.spec.box), "--format", SQUEUE_FORMAT])
        if not answer.ok:
            raise HostUnreachable(f"{self.login.alias}: squeue failed: {_said(answer)}", "check `squeue` works on the login node")
        jobs = [j for j in parse_squeue(answer.stdout) if j.queued or j.running]
        return max(jobs, key=lambda j: int(j.id)) if jobs else None

    def job(self, job_id: str) -> Job:
        """A job by id, also a finished one (while slurmctld remembers it, MinJobAge)."""
        answer = self._run(["squeue", "--noheader", "--jobs", job_id, "--format", SQUEUE_FORMAT])
        jobs = parse_squeue(answer.stdout) if answer.ok else []
        if jobs:
            return jobs[0]
        record = parse_record(self._run(["scontrol", "show", "job", "--oneliner", job_id]).stdout)
        return Job(job_id, record.get("JobState", "GONE"), record.get("Reason", ""), record.get("NodeList", ""))

    def check_request(self) -> None:
        """Refuse, before anything is submitted, a request the cluster cannot run: the
        partition's state, GPUs and time limit, then Slurm's own check (`sbatch --test-only`:
        accounts, QoS, limits). One line naming the problem; exit 2."""
        name = self.slurm.partition
        shown = self._run(["scontrol", "show", "partition", "--oneliner", name])
        if not shown.ok or "PartitionName=" not in shown.stdout:
            known = self._run(["sinfo", "--noheader", "--format", "%R"]).stdout.split()
            raise ConfigError(f"{self.spec.box.name}: partition {name!r} does not exist on {self.login.alias}",
                              f"set slurm.partition to one of: {', '.join(sorted(set(known))) or '(sinfo lists none)'}")
        gres = self._run(["sinfo", "--noheader", "--partition", name, "--format", "%G"]).stdout.split()
        problems = partition_problems(parse_record(shown.stdout), gres, self.slurm)
        if problems:
            raise ConfigError(f"{self.spec.box.name}: {'; '.join(problems)}", "change slurm in devbox.toml (`sinfo` shows the partitions)")
        test = self._run(sbatch_argv(self.slurm, self.spec.box, self.spec.data_root, test_only=True), self.script())
        if not test.ok:
            raise ConfigError(f"{self.spec.box.name}: Slurm refuses the job: {_said(test)}",
                              "fix slurm.account / qos / partition / time in devbox.toml; nothing was submitted")

    def script(self) -> str:
        return job_script(self.spec.box, self.spec.data_root)

    def submit(self) -> str:
        """One batch job for the box, after making its folder (the job's output goes there)."""
        root = shlex.quote(self.spec.data_root)
        made = self.login.run(f"mkdir -p {root} && chmod 700 {root}", check=False)
        if not made.ok:
            raise HostUnreachable(f"{self.login.alias}: cannot make {self.spec.data_root}: {_said(made)}",
                                  "set slurm.shared_dir to shared storage your cluster user can write")
        answer = self._run(sbatch_argv(self.slurm, self.spec.box, self.spec.data_root), self.script())
        job_id = answer.stdout.strip().split(";")[0]
        if not answer.ok or not job_id.isdigit():
            raise HostUnreachable(f"{self.login.alias}: sbatch failed: {_said(answer)}", "nothing is running; fix the cause and re-run `devbox up`")
        return job_id

    def position(self, job: Job) -> int:
        """Where a queued job stands among its partition's queued jobs (1: next)."""
        answer = self._run(["squeue", "--noheader", "--states", "PENDING", "--partition", job.partition or self.slurm.partition,
                            "--sort", "-p,i", "--format", "%i"])
        order = answer.stdout.split()
        return order.index(job.id) + 1 if job.id in order else 0

    def where(self, job: Job) -> tuple[str, tuple[int, ...]]:
        """The running job's node address (NodeAddr) and its GPUs' node-global indices."""
        node = parse_record(self._run(["scontrol", "show", "node", "--oneliner", job.node]).stdout)
        detail = self._run(["scontrol", "show", "job", "--details", job.id]).stdout
        address, gpus = node.get("NodeAddr", ""), job_gpus(detail)
        if not address or not gpus:
            raise HostUnreachable(f"{self.login.alias}: job {job.id} runs on {job.node} but Slurm did not say "
                                  + ("its address" if not address else "its GPUs"), "check `scontrol show job -d` on the login node")
        return address, gpus

    def cluster_ids(self) -> tuple[int, int]:
        """The cluster user's uid and gid: the box runs as them, so its files are theirs."""
        answer = self._run(["id", "-u"]), self._run(["id", "-g"])
        try:
            return int(answer[0].stdout), int(answer[1].stdout)
        except ValueError:
            raise HostUnreachable(f"{self.login.alias}: `id` did not answer", "check `ssh LOGIN id`") from None

    def cancel(self, job: Job) -> None:
        self._run(["scancel", job.id])

    def wait_gone(self, job: Job, wait_s: float = 60) -> bool:
        """Until the job has ended (its script removes the box first, within KillWait)."""
        deadline = time.monotonic() + wait_s
        while (state := self.job(job.id).state) in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED"):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)
        return bool(state)

    def why_ended(self) -> str:
        """What the last job's script wrote as it ended (job id, when, why), if anything."""
        answer = self._run(["cat", f"{self.spec.data_root}/slurm-ended"])
        return answer.stdout.strip() if answer.ok else ""


def box_lock(login: Host, spec: BoxSpec):
    """One `up` or `down` of a Slurm box at a time (from any laptop): a lock file in its
    folder on shared storage, made first (only its owner may enter it)."""
    from devbox.lock import NO_FOLDER, HostLock

    root = shlex.quote(spec.data_root)
    return HostLock(login, f"{spec.data_root}/.devbox.lock", f"mkdir -p {root} && chmod 700 {root} || exit {NO_FOLDER}; ")


def _said(result) -> str:
    from devbox.remote import why_failed

    return why_failed(result)


# ---------------------------------------------------------------- up


@dataclass
class Scheduled:
    job: Job
    position: int = 0
    spec: BoxSpec | None = None       # the box on its node, once the job runs
    submitted: bool = False


def schedule(cluster: Cluster, progress: Progress, wait_s: float, dry_run: bool = False) -> Scheduled:
    """Find or submit the box's job and wait (up to wait_s) for it to run."""
    job = cluster.find_job()
    submitted = False
    if job is None:
        cluster.check_request()
        if dry_run:
            return Scheduled(Job("", "WOULD-SUBMIT"))
        job = cluster.job(cluster.submit())
        submitted = True
        progress(f"{cluster.spec.box.name}: submitted job {job.id} to partition {cluster.slurm.partition}")
    if dry_run:
        return Scheduled(job)
    began = time.monotonic()
    while job.queued and not job.reason and time.monotonic() - began < SETTLE_S:    # a new job: Slurm's first look
        time.sleep(0.25)
        job = cluster.job(job.id)
    last, last_at = None, 0.0
    try:
        while job.queued:
            position = cluster.position(job)
            waited = time.monotonic() - began
            if waited >= wait_s:
                return Scheduled(job, position, submitted=submitted)
            said = (job.reason, position)
            if said != last or waited - last_at >= 10:     # a line when something changes, else every 10 s
                progress(f"{cluster.spec.box.name}: job {job.id} queued ({job.reason or 'waiting'}"
                         + (f", position {position}" if position else "") + f"), waited {format_time(waited)}")
                last, last_at = said, waited
            time.sleep(0.5 if waited < 10 else POLL_S)     # a job that starts at once is seen at once
            job = cluster.job(job.id)
    except KeyboardInterrupt:
        raise LeftQueued(f"{cluster.spec.box.name}: left job {job.id} queued ({job.reason or job.state})",
                         f"`devbox up {cluster.spec.box.name}` waits for it again; `devbox down {cluster.spec.box.name}` cancels it") from None
    if not job.running:
        raise HostUnreachable(f"{cluster.spec.box.name}: job {job.id} is {job.state}" + (f" ({job.reason})" if job.reason else ""),
                              f"see {cluster.spec.data_root}/slurm-{job.id}.out; `devbox up {cluster.spec.box.name}` submits a new one")
    return Scheduled(job, spec=on_node(cluster, job), submitted=submitted)


def on_node(cluster: Cluster, job: Job) -> BoxSpec:
    """The box as an ordinary one on the job's node (its ssh entry written)."""
    address, gpus = cluster.where(job)
    uid, gid = cluster.cluster_ids()
    box = cluster.spec.box
    sshconfig.write_entry(sshconfig.node_entry(box.node_alias, address, cluster.login.alias))
    sshconfig.ensure_include()          # the node is reached by its entry from here on
    return replace(cluster.spec, host=box.node_alias, gpus=gpus, uid=uid, gid=gid, slurm_job=job.id)


def locate(spec: BoxSpec, missing_ok: bool = False) -> BoxSpec | None:
    """A Slurm box's spec on the node its running job holds (None, with missing_ok, when no
    job runs); other boxes as they are."""
    if spec.slurm is None:
        return spec
    with Host(spec.slurm.login) as login:
        cluster = Cluster(login, spec)
        job = cluster.find_job()
        if job is None or not job.running:
            if missing_ok:
                return None
            state = f"its job {job.id} is queued ({job.reason})" if job else "it has no job (not up, or its job ended)"
            raise NotRunning(f"{spec.box.name}: the box is not running: {state}", f"run `devbox up {spec.box.name}`")
        return on_node(cluster, job)


# ---------------------------------------------------------------- status and down


def job_status(spec: BoxSpec) -> tuple[dict, BoxSpec | None]:
    """What `status` says of a Slurm box's job, and the box on its node when the job runs."""
    with Host(spec.slurm.login) as login:
        cluster = Cluster(login, spec)
        job = cluster.find_job()
        if job is None:
            return {"state": "none", "ended": cluster.why_ended()}, None
        info = {"id": job.id, "state": job.state, "reason": job.reason, "node": job.node, "time_left": job.time_left}
        if not job.running:
            info["position"] = cluster.position(job)
            return info, None
        placed = on_node(cluster, job)
        info["gpus"] = list(placed.gpus)
        return info, placed


def end_job(spec: BoxSpec, remove_box: Callable[[BoxSpec], None], purge: bool) -> list[str]:
    """`down` of a Slurm box: the box off its node (by `remove_box`, as any box), then its job
    cancelled, its GPUs back to the scheduler. Its folder on shared storage stays unless purge."""
    done = []
    with Host(spec.slurm.login) as login, box_lock(login, spec) as lock:
        lock.acquire(lambda message: None)
        cluster = Cluster(login, spec)
        job = cluster.find_job()
        if job is not None and job.running:
            remove_box(on_node(cluster, job))
        if job is not None:
            cluster.cancel(job)
            ended = cluster.wait_gone(job)
            done.append(f"Slurm job {job.id} ({job.state.lower()}: " + ("GPUs back to the scheduler)" if ended else
                                                                        "cancelled; Slurm is still ending it)"))
        if purge:
            gone = login.run(["rm", "-rf", "--", spec.data_root], check=False)
            if not gone.ok:
                raise HostUnreachable(f"{login.alias}: could not remove {spec.data_root}: {_said(gone)}", "remove it by hand")
            done.append(f"folder {spec.data_root} (home, workspace, host key)")
    return done
