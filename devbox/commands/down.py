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


def managed_volumes(host: Host) -> dict[str, tuple[str, str]]:
    """Every devbox volume on the host: name -> (its devbox.host, its devbox.box label)."""
    listed = host.docker("volume", "ls", "--filter", "label=devbox.managed=true", "--format",
                         '{{.Name}}\t{{.Label "devbox.host"}}\t{{.Label "devbox.box"}}').stdout
    return {row[0]: (row[1], row[2]) for row in (line.split("\t") for line in listed.splitlines()) if len(row) == 3}


def box_volumes(spec: BoxSpec, managed: dict[str, tuple[str, str]]) -> list[str]:
    """The box's own volumes: the current config's, then those its labels say are the box's
    (a `volumes` entry since removed or renamed), never a shared one."""
    current = [name for name in volume_names(spec) if name in managed]
    earlier = sorted(name for name, owner in managed.items() if owner == (spec.host, spec.box.name) and name not in current)
    return current + earlier


def down_host(spec: BoxSpec, result: DownResult, purge: bool = False) -> None:
    """Remove the box; report as removed or kept only what was really there. A Slurm box's
    job is cancelled too (its folder on shared storage is its data: kept unless purge)."""
    if spec.slurm is not None:
        from devbox.scheduler import end_job

        result.removed += end_job(spec, lambda on_node: remove_box(on_node, result, purge), purge)
        if not purge:
            result.kept.append(f"folder {spec.data_root} (home, workspace, host key)")
        forget(spec, result, purge)
        return
    remove_box(spec, result, purge)
    forget(spec, result, purge)


def remove_box(spec: BoxSpec, result: DownResult, purge: bool) -> None:
    with Host(spec.host) as host, HostLock(host) as lock:
        lock.acquire(lambda message: None)     # not while an `up` or `keys sync` changes a box here
        if inspect_box(host, spec):
            host.docker("rm", "--force", spec.box_name)
            result.removed.append(f"container {spec.box_name}")
        host.docker("rm", "--force", f"{spec.box_name}.next", f"{spec.box_name}.old", check=False)  # an interrupted up's
        if host.docker("network", "rm", spec.network, check=False).ok:   # not data: `up` makes it again
            result.removed.append(f"network {spec.network}")
        existing = managed_volumes(host)
        volumes = box_volumes(spec, existing)
        if spec.secrets_volume in volumes and not purge:   # no box, no secrets left on the host; `up` sends them again
            host.docker("volume", "rm", spec.secrets_volume)
            volumes.remove(spec.secrets_volume)
            result.removed.append(f"volume {spec.secrets_volume}")
        if purge:
            for name in volumes:
                host.docker("volume", "rm", name)
        (result.removed if purge else result.kept).extend(f"volume {name}" for name in volumes)
        result.kept += [f"shared volume {name} (other boxes of the host may use it)" for name in shared_volume_names(spec) if name in existing]


def forget(spec: BoxSpec, result: DownResult, purge: bool) -> None:
    """The laptop's side: the ssh entry and the pin go only with purge."""
    result.changed = bool(result.removed)
    alias = spec.box.ssh_alias
    if purge:
        if sshconfig.remove_entry(spec.box.name):
            result.removed.append(f"ssh entry {alias}")
        if sshconfig.unpin(spec.box.name):
            result.removed.append("pinned host key")
        sshconfig.remove_alias(spec.box.node_alias)
    else:
        result.kept += [what for what, there in ((f"ssh entry {alias}", alias in sshconfig.read_entries()),
                                                 ("pinned host key", alias in sshconfig.pinned_keys())) if there]
