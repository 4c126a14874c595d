"""`devbox down`: remove the container; data (volumes, host key, ssh entry) stays unless --purge."""
from __future__ import annotations

from dataclasses import dataclass, field

from devbox import sshconfig
from devbox.box import inspect_box
from devbox.config import BoxSpec
from devbox.lock import HostLock
from devbox.plan import shared_volume_names, volume_names
from devbox.remote import Host
from devbox.result import HostResult


@dataclass
class DownResult(HostResult):
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return "removed " + (", ".join(self.removed) or "nothing") + ("; kept " + ", ".join(self.kept) if self.kept else "")


def down_host(spec: BoxSpec, result: DownResult, purge: bool = False) -> None:
    """Remove the box; report as removed or kept only what was really there."""
    with Host(spec.host) as host, HostLock(host) as lock:
        lock.acquire(lambda message: None)     # not while an `up` or `keys sync` changes a box here
        if inspect_box(host, spec):
            host.docker("rm", "--force", spec.box_name)
            result.removed.append(f"container {spec.box_name}")
        host.docker("rm", "--force", f"{spec.box_name}.next", f"{spec.box_name}.old", check=False)  # an interrupted up's
        if host.docker("network", "rm", spec.network, check=False).ok:   # not data: `up` makes it again
            result.removed.append(f"network {spec.network}")
        existing = set(host.docker("volume", "ls", "-q", "--filter", "label=devbox.managed=true").stdout.split())
        volumes = [name for name in volume_names(spec) if name in existing]
        if spec.secrets_volume in volumes and not purge:   # no box, no secrets left on the host; `up` sends them again
            host.docker("volume", "rm", spec.secrets_volume)
            volumes.remove(spec.secrets_volume)
            result.removed.append(f"volume {spec.secrets_volume}")
        if purge:
            for name in volumes:
                host.docker("volume", "rm", name)
        (result.removed if purge else result.kept).extend(f"volume {name}" for name in volumes)
        result.kept += [f"shared volume {name} (other boxes of the host may use it)" for name in shared_volume_names(spec) if name in existing]
    result.changed = bool(result.removed)
    alias = spec.box.ssh_alias
    if purge:
        if sshconfig.remove_entry(spec.box.name):
            result.removed.append(f"ssh entry {alias}")
        if sshconfig.unpin(spec.box.name):
            result.removed.append("pinned host key")
    else:
        result.kept += [what for what, there in ((f"ssh entry {alias}", alias in sshconfig.read_entries()),
                                                 ("pinned host key", alias in sshconfig.pinned_keys())) if there]
