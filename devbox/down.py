"""`devbox down`: remove the container; data (volumes, host key, ssh entry) stays unless --purge."""
from __future__ import annotations

from dataclasses import dataclass, field

from devbox import sshconfig
from devbox.config import BoxSpec
from devbox.box import inspect_box
from devbox.errors import DevboxError
from devbox.plan import volume_names
from devbox.remote import Host


@dataclass
class DownReport:
    host: str
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    error: str = ""
    exit_code: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def down_host(spec: BoxSpec, purge: bool = False) -> DownReport:
    """Remove the box; report as removed or kept only what was really there."""
    report = DownReport(spec.host)
    wanted = volume_names(spec)
    try:
        with Host(spec.host) as host:
            if inspect_box(host, spec):
                host.docker("rm", "--force", spec.box_name)
                report.removed.append(f"container {spec.box_name}")
            host.docker("rm", "--force", f"{spec.box_name}.next", f"{spec.box_name}.old", check=False)  # an interrupted up's
            if host.docker("network", "rm", spec.network, check=False).ok:   # not data: `up` makes it again
                report.removed.append(f"network {spec.network}")
            existing = set(host.docker("volume", "ls", "-q", "--filter", "label=devbox.managed=true").stdout.split())
            volumes = [name for name in wanted if name in existing]
            if purge:
                for name in volumes:
                    host.docker("volume", "rm", name)
            (report.removed if purge else report.kept).extend(f"volume {name}" for name in volumes)
    except DevboxError as exc:
        report.error, report.exit_code = exc.one_line(), exc.exit_code
        return report
    alias = sshconfig.BOX_PREFIX + spec.host
    if purge:
        if sshconfig.remove_entry(spec.host):
            report.removed.append(f"ssh entry {alias}")
        if sshconfig.unpin(spec.host):
            report.removed.append("pinned host key")
    else:
        if alias in sshconfig.read_entries():
            report.kept.append(f"ssh entry {alias}")
        if alias in sshconfig.pinned_keys():
            report.kept.append("pinned host key")
    return report
