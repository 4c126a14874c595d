"""`devbox up`: gather -> plan -> apply -> pin -> ssh entry -> verify, for each host.

Hosts run in parallel, like a Fabric ThreadingGroup but over a whole workflow: each
host gets its own result and a failing host never stops the others.
"""
from __future__ import annotations

import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from devbox import sshconfig
from devbox.box import read_host_key, running_box
from devbox.config import BoxSpec
from devbox.errors import DevboxError
from devbox.facts import Facts, host_check_script, parse_facts, state_script
from devbox.image import content_tag, local_has_image
from devbox.keyset import Identity, KeySet, choose_identity, desired_keys
from devbox.lock import HostLock
from devbox.plan import Plan, needs_host_check, plan_up
from devbox.remote import Host
from devbox.steps import apply
from devbox.verify import FAIL, OK, SKIPPED, BoxSession, Check, Expectations, load_identity, run_checks, worst

Progress = Callable[[str], None]


@dataclass
class HostReport:
    host: str
    exit_code: int = 0
    changed: bool = False
    steps: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    error: str = ""
    ssh_alias: str = ""
    container: str = ""  # the box's container name on the host (docker commands take it)
    port: int | None = None
    warnings: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)   # --dry-run: exactly what would run
    notes: list[str] = field(default_factory=list)
    delivery: str = "none"
    bytes_sent: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        data = dict(self.__dict__)
        data["checks"] = [c.as_dict() for c in self.checks]
        return data


def gather(host: Host, spec: BoxSpec, image_tag: str, host_check: bool = True, recreate: bool = False) -> Facts:
    """The box's state in one exchange; the host checks in a second only when `up` will
    create something (host_check=False: never, for `status`)."""
    state = host.run(state_script(spec, image_tag), check=False).stdout
    facts = parse_facts(state, image_tag)
    if host_check and (recreate or needs_host_check(spec, facts, image_tag)):
        facts = parse_facts(state + host.run(host_check_script(spec), check=False).stdout, image_tag)
    return facts


def identity_for(host: Host, spec: BoxSpec, keys: KeySet) -> Identity:
    """The user's key that the box trusts: what the entry and verify log in with.

    Not simply the host's IdentityFile: an ops key reaches the host, a personal one the box.
    """
    files = host.ssh_config.lookup(host.alias).get("identityfile", [])
    return choose_identity(keys, spec.identity, tuple(files), spec.host)


def expectations(spec: BoxSpec) -> Expectations:
    mounts = tuple((v.target, v.read_only) for v in spec.volumes)
    return Expectations(spec.user, spec.uid, spec.gid, mounts, spec.gpu_count_wanted)


def plan_host(host: Host, spec: BoxSpec, keys: KeySet, image_tag: str, force: bool, restart: bool) -> tuple[Facts, Plan]:
    facts = gather(host, spec, image_tag, recreate=restart)
    local_image = not facts.image_present and spec.delivery != "build" and local_has_image(image_tag)
    plan = plan_up(spec, facts, image_tag, keys.authorized_keys, keys.fingerprint, force=force, local_image=local_image,
                   restart=restart)
    return facts, plan


def up_host(spec: BoxSpec, keys: KeySet, *, dry_run: bool = False, force: bool = False, repin: bool = False,
            verify: bool | None = None, progress: Progress = lambda m: None, host: Host | None = None,
            restart: bool = False) -> HostReport:
    """`restart`: re-create the box even when it matches (volumes and host key kept), so
    nothing a revoked key holder left running in it survives."""
    report = HostReport(spec.host, ssh_alias=sshconfig.BOX_PREFIX + spec.host, container=spec.box_name)
    start = time.monotonic()
    host = host or Host(spec.host)
    lock = HostLock(host, spec.box_name)
    try:
        identity = identity_for(host, spec, keys)  # refused here, before the host is touched
        report.warnings = mount_warnings(spec)
        image_tag = content_tag(spec.image)
        facts, plan = plan_host(host, spec, keys, image_tag, force, restart)
        if plan.steps and not dry_run and lock.acquire(progress):
            facts, plan = plan_host(host, spec, keys, image_tag, force, restart)   # the other `up` changed the host
        report.port = plan.port
        report.steps = [s.description for s in plan.steps]
        if dry_run:
            report.commands = [c for step in plan.steps for c in step.commands()]
            report.notes = plan.notes
            return report
        applied = apply(host, plan.steps, spec.host, progress)
        report.port = applied.get("port", plan.port)
        report.delivery = applied.get("delivery", "none")
        report.bytes_sent = applied.get("bytes_sent", 0)
        report.changed = plan.changes
        known_key = facts.box_host_key if facts.box_running and not plan.steps else None
        report.changed |= connect(host, plan, report.port, identity, repin, report, known_key)
        lock.release()
        if verify or (verify is None and report.changed):
            report.checks = verify_box(host, plan.spec, report.port, identity, keys.fingerprints)
            report.exit_code = worst(report.checks)
    except DevboxError as exc:
        report.error, report.exit_code = exc.one_line(), exc.exit_code
    finally:
        lock.release()
        host.close()
        report.seconds = round(time.monotonic() - start, 3)
    return report


def mount_warnings(spec: BoxSpec) -> list[str]:
    """Said on every `up`: host paths that make every key holder root on the host."""
    return [f"WARNING: {spec.host}: host path {v.source} is mounted into the box (allow_host_root_mounts = true): "
            "every key holder can become root on the host" for v in spec.dangerous_mounts()]


def connect(host: Host, plan: Plan, port: int, identity: Identity, repin: bool, report: HostReport, known_key: str | None = None) -> bool:
    """Pin the box's host key (read over the trusted host link) and write the ssh entry."""
    key = known_key or read_host_key(host, plan.spec)
    changed = sshconfig.pin_host_key(plan.spec.host, key, replace=repin)
    entry = sshconfig.BoxEntry(plan.spec.host, port, plan.spec.user, str(identity.path) if identity.path else None)
    changed |= sshconfig.write_entry(entry)
    changed |= sshconfig.ensure_include()
    for flag, text in ((changed, f"ssh entry {entry.alias} written, host key pinned" + (f" ({identity.note})" if identity.note else "")),):
        if flag:
            report.steps.append(text)
    return changed


def verify_box(host: Host, spec: BoxSpec, port: int, identity: Identity, trusted: tuple[str, ...]) -> list[Check]:
    """All checks through the host tunnel with the entry's key and the pinned host key.

    The OpenSSH-client check is a separate process: it runs alongside the others.
    """
    alias = sshconfig.BOX_PREFIX + spec.host
    pinned = sshconfig.pinned_keys().get(alias)
    if not pinned:
        raise DevboxError(f"no pinned host key for {alias}", f"run `devbox up {spec.host}` first")
    openssh = start_openssh_check(alias)
    keys = load_identity(identity.path, identity.fingerprint)
    session = BoxSession(lambda: host.open_tunnel(port), pinned, spec.user, keys, alias, trusted)
    try:
        session.login()
        checks = run_checks(session, expectations(spec))
    finally:
        session.close()
        result = finish_openssh_check(alias, openssh)
    return checks + [result]


def start_openssh_check(alias: str) -> subprocess.Popen | None:
    """The exact path VS Code Remote-SSH takes: the OpenSSH client with the user's config."""
    if not shutil.which("ssh"):
        return None
    argv = ["ssh", "-F", str(sshconfig.user_config_path()), "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", alias, "true"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)


def finish_openssh_check(alias: str, process: subprocess.Popen | None) -> Check:
    if process is None:
        return Check("openssh client path", SKIPPED, "no ssh client on this machine")
    try:
        _, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        return Check("openssh client path", FAIL, "timed out after 60 s")
    if process.returncode == 0:
        return Check("openssh client path", OK, f"ssh {alias}")
    lines = [l for l in err.strip().splitlines() if l.strip()]
    return Check("openssh client path", FAIL, lines[-1] if lines else f"exit {process.returncode}")


def for_each_host(items: list, work: Callable, max_workers: int = 32) -> list:
    """Run work(item) for every item in parallel; results in the given order."""
    if len(items) == 1:
        return [work(items[0])]
    with ThreadPoolExecutor(max_workers=min(max_workers, len(items))) as pool:
        return list(pool.map(work, items))


def verify_host(spec: BoxSpec) -> HostReport:
    """`devbox verify`: only the checks, over the already-written entry."""
    report = HostReport(spec.host, ssh_alias=sshconfig.BOX_PREFIX + spec.host, container=spec.box_name)
    start = time.monotonic()
    try:
        with Host(spec.host) as host:
            box = running_box(host, spec, "verify")
            port = int(box["Config"]["Labels"]["devbox.port"])
            report.port = port
            keys = desired_keys()
            report.checks = verify_box(host, spec, port, identity_for(host, spec, keys), keys.fingerprints)
        report.exit_code = worst(report.checks)
    except DevboxError as exc:
        report.error, report.exit_code = exc.one_line(), exc.exit_code
    report.seconds = round(time.monotonic() - start, 3)
    return report
