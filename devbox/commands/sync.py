"""`devbox keys sync`: rewrite every running box's authorized_keys, live and atomically.

The same write `up` uses (box.write_authorized_keys, into the keys volume that the box
mounts read-only): sshd reads the file per login, so a revoked key is refused at the
next attempt while open sessions stay up. `--restart` also re-creates the box (volumes
and host key kept): in a box, every key holder is the same user, so only a new box is
sure to run nothing a revoked person left behind.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from devbox.box import box_exec, box_sh, running_box, write_authorized_keys
from devbox.commands.up import UpResult, up_host
from devbox.config import BoxSpec
from devbox.errors import DevboxError
from devbox.facts import AUTHORIZED_KEYS_FILE
from devbox.keys import installed_keys
from devbox.keyset import KeySet, KeySource
from devbox.lock import HostLock
from devbox.plan import refuse_other_owner
from devbox.planted import changed_since, listing_script
from devbox.remote import Host
from devbox.result import HostResult


@dataclass
class SyncResult(HostResult):
    keys: int = 0
    restarted: bool = False
    removed: list[str] = field(default_factory=list)      # whose keys this sync took off the box
    planted: list[str] = field(default_factory=list)      # start-up files changed in the home since they were added
    warnings: list[str] = field(default_factory=list)
    note: str = ""

    def summary(self) -> str:
        if self.note:
            return self.note
        return (f"{self.keys} key(s) " + ("installed" if self.changed else "already in place")
                + (f"; removed {', '.join(self.removed)}" if self.removed else "")
                + (f"; {len(self.planted)} start-up file(s) changed in the shared home since (listed below)" if self.planted else "")
                + ("; box re-created (volumes and host key kept, every process in it ended)" if self.restarted else ""))


def sync_host(spec: BoxSpec, result: SyncResult, source: KeySource, restart: bool = False,
              progress=lambda message: None) -> None:
    """Under the engine lock, as `up` writes keys: a sync never races an `up` of the box
    (which would write the keys it read before a revocation), and keys/ is read once the
    lock is held, so what is written is keys/ as it is now."""
    from devbox.scheduler import locate

    placed = locate(spec, missing_ok=True)
    if placed is None:     # a Slurm box with no running job has no keys anywhere: its next `up` writes keys/ as it is then
        result.note = "not running (no Slurm job): its next `up` installs keys/ as it is then"
        return
    spec = placed
    with Host(spec.host) as host, HostLock(host) as lock:
        lock.acquire(progress)
        keys = source.for_box(spec)
        result.keys = keys.count
        box = running_box(host, spec, "sync")
        refuse_other_owner(spec, box["Config"].get("Labels") or {})
        if not any(m.get("Name") == spec.keys_volume for m in box.get("Mounts") or []):
            raise DevboxError(f"{spec.box.name}: this box keeps its keys where its user can write them (made by an older devbox)",
                              f"run `devbox up {spec.box.name}` to re-create it with read-only keys (volumes are kept)", exit_code=2)
        current = box_exec(host, spec, ["cat", AUTHORIZED_KEYS_FILE], check=False).stdout
        if current.strip() != keys.authorized_keys.strip():
            write_authorized_keys(host, spec, box["Config"]["Image"], keys.authorized_keys)
            result.changed = True
            _list_planted(host, spec, result, keys, current)
        if restart:
            up_host(spec, UpResult.start(spec), source, force=True, restart=True, verify=False, host=host, lock=lock)
            result.restarted = result.changed = True


def _list_planted(host: Host, spec: BoxSpec, result: SyncResult, keys: KeySet, before: str) -> None:
    """A key left a shared home: list the start-up files changed since it was added
    (devbox/planted.py), for whoever revoked it to read before anyone logs in."""
    leaving = {fp: name for fp, name in installed_keys(before).items() if fp not in keys.fingerprints}
    if not leaving:
        return
    result.removed = sorted(set(leaving.values()))
    times = [keys.added_at(fp) for fp in leaving]
    since = None if None in times else min(times)
    listing = box_sh(host, spec, listing_script(), check=False).stdout
    changed = changed_since(listing, since)
    result.planted = [c.text() for c in changed]
    if changed:
        when = "since their key was added" if since is not None else "(their key's add time is unknown: all of them)"
        result.warnings.append(f"{spec.box.name}: {', '.join(result.removed)} had the same login as everyone on this box; start-up "
                               f"files in its home changed {when}: {', '.join(result.planted)}. Read them before the next "
                               "login: they run as whoever logs in (README: trust model)")
