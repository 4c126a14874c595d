"""`devbox up`: gather -> plan -> apply -> pin -> ssh entry -> verify, for one host.

cli.py runs it over every host given (devbox.result.for_each_host).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from devbox import sshconfig
from devbox.basetag import resolve_on
from devbox.box import read_host_key
from devbox.commands.verify import VerifyResult, check_lines, identity_for, verify_box
from devbox.config import BoxSpec
from devbox.errors import DevboxError
from devbox.facts import Facts, gather
from devbox.image import content_tag, local_has_image
from devbox.boxenv import BoxEnv, read_box_env
from devbox.dotfiles import Dotfiles, read_dotfiles
from devbox.keyset import Identity, KeySet, KeySource, shared_secrets_warning
from devbox.lock import HostLock
from devbox.plan import Plan, needs_host_check, plan_up
from devbox.remote import Host
from devbox.steps import apply
from devbox.verify import worst

Progress = Callable[[str], None]


@dataclass
class UpResult(VerifyResult):
    dry_run: bool = False
    steps: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)   # --dry-run: exactly what would run
    notes: list[str] = field(default_factory=list)      # why nothing needs doing
    warnings: list[str] = field(default_factory=list)
    delivery: str = "none"
    transport: str = ""                                 # streamed: "openssh" or "paramiko"
    bytes_sent: int = 0
    base_image: str = ""                                # the base the box is (to be) built on
    base_why: str = ""                                  # why that one (base_image = "auto")
    slurm: dict = field(default_factory=dict)           # a Slurm box's job: id, state, reason, position, node, gpus
    state: str = ""                                     # "queued" while a Slurm box's job waits

    def text(self) -> str:
        head = f"{self.host}: "
        if self.error:
            return head + "FAILED: " + self.error.removeprefix(head)
        if self.state == "queued":
            job = self.slurm
            where = f"{job.get('reason') or 'waiting'}" + (f", position {job['position']}" if job.get("position") else "")
            return (f"{head}queued: job {job['id']} ({where}); it stays queued: `devbox up {self.host}` waits for it, "
                    f"`devbox status {self.host}` shows it, `devbox down {self.host}` cancels it")
        if self.dry_run and self.slurm.get("state") == "WOULD-SUBMIT":
            return f"{head}would submit a Slurm job for the box, then start it on the node the job gets"
        if self.dry_run:
            base = [f"  base image {self.base_image}: {self.base_why}"] if self.base_image else []
            lines = [head + "would run:", *base] + [f"  - {s}" for s in self.steps]
            lines += [f"      $ {c}" for c in self.commands]
            return "\n".join(lines if self.steps else lines + [f"  (nothing to do: {n})" for n in self.notes or ["-"]])
        done = "changed" if self.changed else "already up to date, nothing changed" + ("" if self.checks else "; `devbox verify` re-checks it")
        lines = [f"{head}{done} ({self.seconds:.1f} s)"] + [f"  - {s}" for s in self.steps] + check_lines(self.checks)
        if self.exit_code == 0:
            lines.append(f"  ready: ssh {self.ssh_alias}   (VS Code: Remote-SSH → Connect to Host → {self.ssh_alias})")
        return "\n".join(lines)


@dataclass(frozen=True)
class LaptopSide:
    """What `up` reads on this machine before touching the host, besides the keys: the
    box's env and secrets and its dotfiles. A missing secret stops it here."""

    box_env: BoxEnv
    dotfiles: Dotfiles | None

    @classmethod
    def read(cls, spec: BoxSpec) -> "LaptopSide":
        return cls(read_box_env(spec), read_dotfiles(spec))


def plan_host(host: Host, spec: BoxSpec, keys: KeySet, side: LaptopSide, image_tag: str, force: bool, restart: bool,
              asked: str = "", read_keys: Callable[[], str] | None = None) -> tuple[Facts, Plan]:
    facts = gather(host, spec, image_tag, lambda found: restart or needs_host_check(spec, found, image_tag), asked)
    local_image = not facts.image_present and spec.delivery != "build" and local_has_image(image_tag)
    plan = plan_up(spec, facts, image_tag, keys.authorized_keys, keys.fingerprint, force=force, local_image=local_image,
                   restart=restart, read_keys=read_keys, box_env=side.box_env, dotfiles=side.dotfiles)
    return facts, plan


def up_box(spec: BoxSpec, result: UpResult, keys: KeySource, *, wait_s: float = 600, no_wait: bool = False, **options) -> None:
    """`devbox up NAME`: a box on a host as it is; a Slurm box once its job runs, on the job's node."""
    if spec.slurm is None:
        return up_host(spec, result, keys, **options)
    from devbox.scheduler import Cluster, box_lock, schedule

    progress = options.get("progress", lambda m: None)
    keys.for_box(spec)                # refused here (an owner with no key, a missing secret), before a job holds GPUs
    LaptopSide.read(spec)
    with Host(spec.slurm.login) as login, box_lock(login, spec) as lock:
        if not options.get("dry_run"):
            lock.acquire(progress)        # two `up`s of one box submit one job
        scheduled = schedule(Cluster(login, spec), progress, 0 if no_wait else wait_s, options.get("dry_run", False))
    job = scheduled.job
    result.slurm = {"id": job.id, "state": job.state, "reason": job.reason, "position": scheduled.position, "node": job.node,
                    "submitted": scheduled.submitted}
    if scheduled.spec is None:
        result.dry_run = options.get("dry_run", False)
        if job.queued:
            result.state = "queued"
            result.changed = scheduled.submitted
            result.exit_code = 0 if no_wait else 3      # --wait ran out: not ready (the job stays queued)
        return None
    result.slurm["gpus"] = list(scheduled.spec.gpus)
    try:
        up_host(scheduled.spec, result, keys, **options)
    except (DevboxError, KeyboardInterrupt):
        if scheduled.submitted:          # nothing half-applied: a job this run submitted holds no GPUs for a box that failed
            with Host(spec.slurm.login) as login:
                Cluster(login, spec).cancel(job)
        raise


def up_host(spec: BoxSpec, result: UpResult, keys: KeySource, *, dry_run: bool = False, force: bool = False, repin: bool = False,
            verify: bool | None = None, progress: Progress = lambda m: None, restart: bool = False,
            host: Host | None = None, lock: HostLock | None = None) -> None:
    """`restart`: re-create the box even when it matches (volumes and host key kept), so
    nothing a revoked key holder left running in it survives. `host`, `lock`: a connection
    the caller already has open and the engine lock it holds (keys sync --restart)."""
    result.dry_run = dry_run
    side = LaptopSide.read(spec)
    with (host or Host(spec.host)) as connected:
        with (lock or HostLock(connected)) as held:
            _up(connected, held, spec, result, keys, side, dry_run, force, repin, verify, progress, restart)


def _up(host: Host, lock: HostLock, spec: BoxSpec, result: UpResult, source: KeySource, side: LaptopSide, dry_run: bool,
        force: bool, repin: bool, verify: bool | None, progress: Progress, restart: bool) -> None:
    keys = source.for_box(spec)   # forward_agent on a box of several people is refused here
    identity = identity_for(host, spec, keys)  # refused here, before the host is touched
    result.warnings = mount_warnings(spec) + [w for w in [shared_secrets_warning(spec, keys)] if w]
    spec, choice, asked = resolve_on(host, spec)
    result.base_image, result.base_why = choice.tag, choice.why
    image_tag = content_tag(spec.image)
    facts, plan = plan_host(host, spec, keys, side, image_tag, force, restart, asked)
    if plan.steps and not dry_run:
        # Under the engine lock: another box may have taken GPUs or a port, or keys/ changed,
        # since the first look; the keys step reads keys/ again when it writes them.
        lock.acquire(progress)
        keys = source.for_box(spec)
        read_keys = lambda: source.for_box(spec).authorized_keys  # noqa: E731
        facts, plan = plan_host(host, spec, keys, side, image_tag, force, restart, asked, read_keys)
    result.port = plan.port
    result.steps = [s.description for s in plan.steps]
    result.warnings += plan.warnings
    if dry_run:
        result.commands = [c for step in plan.steps for c in step.commands()]
        result.notes = plan.notes
        return
    applied = apply(host, plan.steps, spec.host, progress)
    result.port = applied.get("port", plan.port)
    result.delivery = applied.get("delivery", "none")
    result.transport = applied.get("transport", "")
    result.bytes_sent = applied.get("bytes_sent", 0)
    result.changed = plan.changes
    known_key = facts.box_host_key if facts.box_running and not plan.steps else None
    result.changed |= connect(host, plan, result.port, identity, repin, result, known_key)
    lock.release()
    if verify or (verify is None and result.changed):
        keys = source.for_box(spec)
        result.checks = verify_box(host, plan.spec, result.port, identity, keys.fingerprints)
        result.exit_code = worst(result.checks)


def mount_warnings(spec: BoxSpec) -> list[str]:
    """Said on every `up`: host paths that make every key holder root on the host."""
    return [f"WARNING: {spec.box.name}: host path {v.source} is mounted into the box (allow_host_root_mounts = true): "
            "every key holder can become root on the host" for v in spec.dangerous_mounts()]


def connect(host: Host, plan: Plan, port: int, identity: Identity, repin: bool, result: UpResult, known_key: str | None = None) -> bool:
    """Pin the box's host key (read over the trusted host link) and write the ssh entry."""
    key = known_key or read_host_key(host, plan.spec)
    box = plan.spec.box
    changed = sshconfig.pin_host_key(box.name, key, replace=repin)
    path = identity.path or (sshconfig.write_agent_identity(box.name, identity.public_key) if identity.public_key else None)
    entry = sshconfig.BoxEntry(box.host, port, plan.spec.user, str(path) if path else None, box.name, plan.spec.forward_agent)
    changed |= sshconfig.write_entry(entry)
    changed |= sshconfig.ensure_include()
    if changed:
        result.steps.append(f"ssh entry {entry.alias} written, host key pinned" + (f" ({identity.note})" if identity.note else ""))
    return changed
