"""`devbox down`: remove the container; data (volumes, host key, ssh entry) stays unless --purge."""
from __future__ import annotations

from dataclasses import dataclass, field

from devbox import sshconfig
from devbox.box import inspect_box
from devbox.config import BoxSpec
from devbox.plan import volume_names
from devbox.remote import Host
from devbox.result import HostResult


@dataclass
class DownResult(HostResult):
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return "removed " + (", ".join(self.removed) or "nothing") + ("; kept " + ", ".join(self.kept) if self.kept else "")


def box_volumes(host: Host, spec: BoxSpec) -> list[str]:
    """Every volume devbox made for this box, found by its labels and name: those of an earlier
    config (a `volumes` entry since removed or renamed) too, the current config's first."""
    labelled = host.docker("volume", "ls", "-q", "--filter", "label=devbox.managed=true",
                           "--filter", f"label=devbox.host={spec.host}").stdout.split()
    current = volume_names(spec)
    earlier = [name for name in labelled if name.startswith(spec.box_name + "-") and name not in current]
    return [name for name in current if name in labelled] + sorted(earlier)


def down_host(spec: BoxSpec, result: DownResult, purge: bool = False) -> None:
    """Remove the box; report as removed or kept only what was really there."""
    with Host(spec.host) as host:
        if inspect_box(host, spec):
            host.docker("rm", "--force", spec.box_name)
            result.removed.append(f"container {spec.box_name}")
        host.docker("rm", "--force", f"{spec.box_name}.next", f"{spec.box_name}.old", check=False)  # an interrupted up's
        if host.docker("network", "rm", spec.network, check=False).ok:   # not data: `up` makes it again
            result.removed.append(f"network {spec.network}")
        volumes = box_volumes(host, spec)
        if purge:
            for name in volumes:
                host.docker("volume", "rm", name)
        (result.removed if purge else result.kept).extend(f"volume {name}" for name in volumes)
    result.changed = bool(result.removed)
    alias = sshconfig.BOX_PREFIX + spec.host
    if purge:
        if sshconfig.remove_entry(spec.host):
            result.removed.append(f"ssh entry {alias}")
        if sshconfig.unpin(spec.host):
            result.removed.append("pinned host key")
    else:
        result.kept += [what for what, there in ((f"ssh entry {alias}", alias in sshconfig.read_entries()),
                                                 ("pinned host key", alias in sshconfig.pinned_keys())) if there]
