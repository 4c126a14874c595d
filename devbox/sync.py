"""`devbox keys sync`: rewrite every running box's authorized_keys, live and atomically.

The same write `up` uses (box.write_authorized_keys): sshd reads the file per login, so
a revoked key is refused at the next attempt while open sessions stay up.
"""
from __future__ import annotations

from dataclasses import dataclass

from devbox.box import write_authorized_keys
from devbox.config import BoxSpec
from devbox.errors import DevboxError
from devbox.facts import parse_inspect
from devbox.keyset import KeySet
from devbox.remote import Host


@dataclass
class SyncReport:
    host: str
    keys: int = 0
    changed: bool = False
    error: str = ""
    exit_code: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def sync_host(spec: BoxSpec, keys: KeySet) -> SyncReport:
    from devbox.box import AUTHORIZED_KEYS, box_exec

    report = SyncReport(spec.host, keys.count)
    try:
        with Host(spec.host) as host:
            box = parse_inspect(host.docker("container", "inspect", spec.box_name, check=False).stdout)
            if not box or not box.get("State", {}).get("Running"):
                raise DevboxError(f"{spec.host}: no running box to sync", f"run `devbox up {spec.host}`", exit_code=3)
            current = box_exec(host, spec, ["cat", f"{spec.home}/{AUTHORIZED_KEYS}"], check=False).stdout
            if current.strip() != keys.authorized_keys.strip():
                write_authorized_keys(host, spec, keys.authorized_keys)
                report.changed = True
    except DevboxError as exc:
        report.error, report.exit_code = exc.one_line(), exc.exit_code
    return report
