"""`devbox secrets sync [--dotfiles]`: push devbox.toml's env, secrets and git settings to
running boxes, live (same container), as `up` would; with --dotfiles, copy the dotfiles too.

Everything is read on this machine first: a missing secret stops the host before anything
on it changes. Only names are ever reported, never values.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from devbox.box import box_exec, running_box, write_box_env
from devbox.boxenv import READ_BOX_ENV, parse_box_env, read_box_env
from devbox.config import BoxSpec
from devbox.dotfiles import copy_dotfiles, read_dotfiles
from devbox.errors import ConfigError
from devbox.remote import Host
from devbox.result import HostResult


@dataclass
class SecretsResult(HostResult):
    env: list[str] = field(default_factory=list)          # names only
    secrets: list[str] = field(default_factory=list)      # names only
    dotfiles_written: list[str] = field(default_factory=list)
    dotfiles_kept: list[str] = field(default_factory=list)

    def summary(self) -> str:
        names = ", ".join(self.secrets) or "no secrets"
        text = f"{names}; {len(self.env)} variable(s) " + ("written" if self.changed else "already in place")
        if self.dotfiles_written or self.dotfiles_kept:
            text += f"; dotfiles written: {', '.join(self.dotfiles_written) or 'none'}"
            text += f"; kept (changed in the box): {', '.join(self.dotfiles_kept)}" if self.dotfiles_kept else ""
        return text


def sync_secrets_host(spec: BoxSpec, result: SecretsResult, dotfiles: bool = False) -> None:
    box_env = read_box_env(spec)
    files = read_dotfiles(spec) if dotfiles else None
    if dotfiles and files is None:
        raise ConfigError(f"{spec.box.name}: --dotfiles, but devbox.toml sets no dotfiles folder",
                          'add dotfiles = "~/dotfiles" ([defaults] or [hosts.NAME])')
    result.env, result.secrets = [n for n, _ in box_env.env], [n for n, _ in box_env.secrets]
    with Host(spec.host) as host:
        box = running_box(host, spec, "sync secrets to")
        if not any(m.get("Name") == spec.secrets_volume for m in box.get("Mounts") or []):
            raise ConfigError(f"{spec.box.name}: this box has no secrets volume (made by an older devbox)",
                              f"run `devbox up {spec.box.name}` to re-create it (volumes are kept)")
        current = parse_box_env(box_exec(host, spec, ["sh", "-c", READ_BOX_ENV], check=False).stdout)
        if current.digest != box_env.digest:
            write_box_env(host, spec, box["Config"]["Image"], box_env)
            result.changed = True
        if files is not None:
            copied = copy_dotfiles(host, spec, files)
            result.dotfiles_written, result.dotfiles_kept = copied.written, copied.kept
            result.changed |= bool(copied.written)
