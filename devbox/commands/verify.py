"""`devbox verify` (and `up`'s own verification): the checks over the user's own SSH path."""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field

from devbox import sshconfig
from devbox.box import inspect_box, running_box
from devbox.config import BoxSpec
from devbox.errors import DevboxError
from devbox.keyset import Identity, KeySet, choose_identity
from devbox.remote import Host
from devbox.result import HostResult
from devbox.verify import FAIL, OK, SKIPPED, BoxSession, Check, Expectations, load_identity, run_checks, worst

MARKS = {OK: "ok  ", FAIL: "FAIL", SKIPPED: "skip"}


def check_lines(checks: list[Check]) -> list[str]:
    return [f"  [{MARKS[c.status]}] {c.name}" + (f": {c.detail}" if c.detail else "") for c in checks]


@dataclass
class VerifyResult(HostResult):
    ssh_alias: str = ""
    container: str = ""
    port: int | None = None
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0

    @classmethod
    def start(cls, spec: BoxSpec) -> "VerifyResult":
        return cls(spec.host, ssh_alias=sshconfig.BOX_PREFIX + spec.host, container=spec.box_name)

    def text(self) -> str:
        return "\n".join([f"{self.host}: " + (f"FAILED: {self.error}" if self.error else "")] + check_lines(self.checks))


def identity_for(host: Host, spec: BoxSpec, keys: KeySet) -> Identity:
    """The user's key that the box trusts: what the entry and verify log in with.

    Not simply the host's IdentityFile: an ops key reaches the host, a personal one the box.
    """
    files = host.ssh_config.lookup(host.alias).get("identityfile", [])
    return choose_identity(keys, spec.identity, tuple(files), spec.host)


def expectations(spec: BoxSpec, box: dict | None = None) -> Expectations:
    """From the spec, and the runtime limits from what the box was created with (its inspect)."""
    mounts = tuple((v.target, v.read_only) for v in spec.volumes)
    host_config = (box or {}).get("HostConfig") or {}
    memlock = next((u.get("Hard") for u in host_config.get("Ulimits") or [] if u.get("Name") == "memlock"), None)
    shm = host_config.get("ShmSize")
    return Expectations(spec.user, spec.uid, spec.gid, mounts, spec.gpu_count_wanted,
                        None if memlock in (None, -1) else str(memlock // 1024), shm // 1024 if shm else None)


def verify_host(spec: BoxSpec, result: VerifyResult, keys: KeySet) -> None:
    """`devbox verify`: only the checks, over the already-written entry."""
    with Host(spec.host) as host:
        box = running_box(host, spec, "verify")
        result.port = int(box["Config"]["Labels"]["devbox.port"])
        result.checks = verify_box(host, spec, result.port, identity_for(host, spec, keys), keys.fingerprints, box)
    result.exit_code = worst(result.checks)


def verify_box(host: Host, spec: BoxSpec, port: int, identity: Identity, trusted: tuple[str, ...],
               box: dict | None = None) -> list[Check]:
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
        checks = run_checks(session, expectations(spec, box or inspect_box(host, spec)))
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
    lines = [line for line in err.strip().splitlines() if line.strip()]
    return Check("openssh client path", FAIL, lines[-1] if lines else f"exit {process.returncode}")
