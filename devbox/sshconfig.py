"""SSH config, both directions: reading the user's (following Include as OpenSSH does)
and owning devbox's own file of `devbox-HOST` entries plus its pinned known_hosts.

paramiko's SSHConfig ignores `Include`, so a host defined in an included file (as
devbox's own entries are) would be "not found"; we expand Includes into one text first.
"""
from __future__ import annotations

import fcntl
import functools
import glob
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from devbox.errors import ConfigError, HostKeyMismatch

INCLUDE_RE = re.compile(r"^\s*include(?:\s+|\s*=\s*)(.+)$", re.IGNORECASE)
MAX_INCLUDE_DEPTH = 16  # OpenSSH's READCONF_MAX_DEPTH
BOX_PREFIX = "devbox-"
BEGIN_MARK = "# >>> devbox: include (managed by devbox, keep this line first) >>>"
END_MARK = "# <<< devbox <<<"


def ssh_dir() -> Path:
    return Path.home() / ".ssh"


def user_config_path() -> Path:
    return Path(os.environ.get("DEVBOX_SSH_CONFIG", ssh_dir() / "config"))


def devbox_dir() -> Path:
    return ssh_dir() / "devbox"


def devbox_config_path() -> Path:
    return devbox_dir() / "config"


def devbox_known_hosts_path() -> Path:
    return devbox_dir() / "known_hosts"


# ---------------------------------------------------------------- reading


def _include_targets(pattern: str, relative_to: Path) -> list[Path]:
    """Paths an Include names: `~` expanded, relative ones against ~/.ssh, globs sorted."""
    paths: list[Path] = []
    for word in pattern.split():
        word = os.path.expanduser(word.strip('"'))
        if not os.path.isabs(word):
            word = str(relative_to / word)
        paths.extend(Path(p) for p in sorted(glob.glob(word)))
    return paths


def expand_includes(path: Path, depth: int = 0) -> str:
    """The config text with every Include replaced, in place, by the files it names."""
    if depth > MAX_INCLUDE_DEPTH:
        raise ConfigError(f"{path}: Include nested more than {MAX_INCLUDE_DEPTH} deep", "remove the Include loop")
    try:
        text = path.read_text()
    except OSError as exc:
        if depth == 0 and not path.exists():
            return ""
        raise ConfigError(f"cannot read ssh config {path}: {exc.strerror}", "fix its permissions") from exc
    out: list[str] = []
    for line in text.splitlines():
        match = INCLUDE_RE.match(line)
        if not match:
            out.append(line)
            continue
        for target in _include_targets(match.group(1), ssh_dir()):
            if target.is_file():
                out.append(expand_includes(target, depth + 1))
    return "\n".join(out) + "\n"


def load_user_config(path: Path | None = None):
    """A paramiko SSHConfig of the user's config with Includes followed (read every time,
    parsed once per distinct text: a fleet of 100 hosts shares one parse)."""
    return _parse_config(expand_includes(path or user_config_path()))


@functools.lru_cache(maxsize=4)
def _parse_config(text: str):
    """Parsed once per text; lookups only read it, so threads share it safely."""
    from paramiko import SSHConfig

    config = SSHConfig.from_text(text)
    # Left raw for expand_tokens: paramiko replaces `~` anywhere in a ProxyCommand and
    # knows neither %n nor %%.
    config.TOKENS_BY_CONFIG_KEY = {**SSHConfig.TOKENS_BY_CONFIG_KEY, "proxycommand": [], "proxyjump": []}
    return config


def exact_host_names() -> set[str]:
    """The Host names the user's ssh config spells out (patterns like `gpu-*` left aside)."""
    if not user_config_path().exists():
        return set()
    return {name for name in load_user_config().get_hostnames() if not any(c in name for c in "*?!")}


TOKEN_RE = re.compile(r"%(.?)")


def expand_tokens(value: str, key: str, alias: str, lookup: dict, user: str | None = None, port: int | None = None) -> str:
    """OpenSSH's percent_expand for ProxyCommand, ProxyJump and UserKnownHostsFile.

    %h HostName, %n the alias as typed, %p port, %r remote user, %u local user,
    %d local home, %% a percent; an unknown token is a config error, as in OpenSSH.
    """
    import getpass

    tokens = {
        "%": "%",
        "h": lookup.get("hostname", alias),
        "n": alias,
        "p": str(port or lookup.get("port", 22)),
        "r": user or lookup.get("user") or getpass.getuser(),
    }
    if key == "userknownhostsfile":
        tokens.update(u=getpass.getuser(), d=str(Path.home()))

    def one(match: re.Match) -> str:
        if match.group(1) not in tokens:
            raise ConfigError(f"ssh config: {key} of {alias} has an unknown token %{match.group(1)}",
                              f"allowed here: {' '.join('%' + t for t in tokens)}")
        return tokens[match.group(1)]

    return TOKEN_RE.sub(one, value)


# ---------------------------------------------------------------- writing


@dataclass(frozen=True)
class BoxEntry:
    """What `ssh devbox-HOST` needs: jump through HOST to the box's loopback port."""

    host: str
    port: int
    user: str
    identity_file: str | None   # None: a key only ssh-agent holds
    name: str = ""              # the box's name ("": the host's own box, named after it)
    forward_agent: bool = False  # devbox.toml's forward_agent (a box of one person's keys only)

    @property
    def alias(self) -> str:
        return BOX_PREFIX + (self.name or self.host)

    def render(self, known_hosts: Path) -> str:
        # HostKeyAlias: every box sits at 127.0.0.1 of its own host, so the pin is
        # keyed by the alias, not by "[127.0.0.1]:port" which would collide across hosts.
        return (
            f"Host {self.alias}\n"
            f"    HostName 127.0.0.1\n"
            f"    Port {self.port}\n"
            f"    User {self.user}\n"
            f"    ProxyJump {self.host}\n"
            + self._identity_lines() +
            f"    HostKeyAlias {self.alias}\n"
            f"    StrictHostKeyChecking yes\n"
            f"    UserKnownHostsFile {known_hosts}\n"
            f"    ForwardAgent {'yes' if self.forward_agent else 'no'}\n"
            f"    ForwardX11 no\n"
            f"    ServerAliveInterval 30\n"
            # A user's `Host *` ControlMaster would share one socket between boxes on different
            # hosts at the same 127.0.0.1:port (%C does not hash ProxyJump in OpenSSH 9.2), and
            # a reused master skips the host key check: boxes are never multiplexed.
            f"    ControlMaster no\n"
            f"    ControlPath none\n"
        )

    def _identity_lines(self) -> str:
        # Written explicitly either way: a user's `Host *` further down (IdentitiesOnly yes is
        # common) would otherwise decide, and hide the agent's key or offer every other one.
        if self.identity_file is None:
            return "    IdentitiesOnly no\n"
        path = f'"{self.identity_file}"' if " " in self.identity_file else self.identity_file
        return f"    IdentityFile {path}\n    IdentitiesOnly yes\n"


@dataclass(frozen=True)
class NodeEntry:
    """A Slurm box's node, as its job found it: reached through the login node at the
    address Slurm knows it by, as the login's own user and key. Its host key must already
    be known (clusters publish their nodes' keys): no trust on first use here either."""

    alias: str
    address: str
    login: str
    user: str | None
    identity_files: tuple[str, ...] = ()
    known_hosts: str | None = None

    def render(self, known_hosts: Path) -> str:
        lines = [f"Host {self.alias}", f"    HostName {self.address}", f"    ProxyJump {self.login}"]
        lines += [f"    User {self.user}"] if self.user else []
        lines += [f'    IdentityFile "{path}"' for path in self.identity_files]
        lines += [f"    UserKnownHostsFile {self.known_hosts}"] if self.known_hosts else []
        lines += ["    StrictHostKeyChecking yes", "    ControlMaster no", "    ControlPath none"]
        return "\n".join(lines) + "\n"


def node_entry(alias: str, address: str, login: str) -> NodeEntry:
    """The node entry for a box whose job runs at `address`, borrowing the login's user, keys and known_hosts."""
    found = load_user_config().lookup(login)
    known = found.get("userknownhostsfile")
    return NodeEntry(alias, address, login, found.get("user"), tuple(found.get("identityfile", ())), known)


_EDITING = threading.Lock()


def _serialized(edit):
    """Read-modify-write of the ssh files one at a time: the threads of one `up` over many
    hosts, and two `devbox` processes, would otherwise lose each other's entries."""
    @functools.wraps(edit)
    def locked(*args, **kwargs):
        devbox_dir().mkdir(mode=0o700, parents=True, exist_ok=True)
        with _EDITING, open(devbox_dir() / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            return edit(*args, **kwargs)
    return locked


def _atomic_write(path: Path, text: str, mode: int = 0o600) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _entry_blocks(text: str) -> dict[str, str]:
    """Split devbox's config into its Host blocks, keyed by alias."""
    blocks: dict[str, str] = {}
    for chunk in re.split(r"(?m)^(?=Host )", text):
        if chunk.startswith("Host "):
            blocks[chunk.split()[1]] = chunk.rstrip("\n") + "\n"
    return blocks


def read_entries() -> dict[str, str]:
    path = devbox_config_path()
    return _entry_blocks(path.read_text()) if path.exists() else {}


@_serialized
def write_entry(entry: BoxEntry) -> bool:
    """Add or replace one entry in devbox's file; True when the file changed."""
    blocks = read_entries()
    rendered = entry.render(devbox_known_hosts_path())
    if blocks.get(entry.alias) == rendered:
        return False
    blocks[entry.alias] = rendered
    _write_blocks(blocks)
    return True


@_serialized
def remove_entry(host: str) -> bool:
    agent_identity_path(host).unlink(missing_ok=True)
    return _remove_block(BOX_PREFIX + host)


@_serialized
def remove_alias(alias: str) -> bool:
    return _remove_block(alias)


def _remove_block(alias: str) -> bool:
    blocks = read_entries()
    if blocks.pop(alias, None) is None:
        return False
    _write_blocks(blocks)
    return True


def agent_identity_path(host: str) -> Path:
    return devbox_dir() / f"{BOX_PREFIX}{host}.pub"


def write_agent_identity(host: str, public_key: str) -> Path:
    """The public half of a key only ssh-agent holds, for the entry's IdentityFile.

    With `IdentityFile KEY.pub` and `IdentitiesOnly yes`, OpenSSH offers exactly that agent
    key: an agent holding other keys first would spend the box's MaxAuthTries (3) on them.
    """
    path = agent_identity_path(host)
    if not path.exists() or path.read_text().strip() != public_key:
        _atomic_write(path, public_key + "\n", 0o644)
    return path


def _write_blocks(blocks: dict[str, str]) -> None:
    header = "# Managed by devbox: one entry per box. Edits are overwritten by `devbox up`.\n\n"
    _atomic_write(devbox_config_path(), header + "\n".join(blocks[k] for k in sorted(blocks)))


def include_line() -> str:
    return f"Include {devbox_config_path()}"


@_serialized
def ensure_include(config: Path | None = None) -> bool:
    """Put one absolute Include of devbox's file at the top of the user's config.

    Includes must come before the user's first Host block to apply globally; the
    user's own lines are kept byte for byte after a timestamped backup.
    """
    config = config or user_config_path()
    original = config.read_text() if config.exists() else ""
    if include_line() in original.splitlines():
        return False
    if original:
        backup = config.with_name(f"{config.name}.devbox-backup-{time.strftime('%Y%m%d%H%M%S')}")
        shutil.copy2(config, backup)
    block = f"{BEGIN_MARK}\n{include_line()}\n{END_MARK}\n\n"
    _atomic_write(config, block + original)
    return True


# ---------------------------------------------------------------- pinning


def pinned_keys() -> dict[str, str]:
    """alias -> "type base64" from devbox's known_hosts."""
    path = devbox_known_hosts_path()
    pins: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and not line.startswith("#"):
                pins[parts[0]] = f"{parts[1]} {parts[2]}"
    return pins


@_serialized
def pin_host_key(host: str, public_key: str, replace: bool = False) -> bool:
    """Record the box's host key read through the trusted host connection.

    A different key already pinned is an error unless `replace` (the box was
    purged and re-made on purpose): it is never silently accepted.
    """
    alias = BOX_PREFIX + host
    key = " ".join(public_key.split()[:2])
    if not key.startswith("ssh-ed25519 "):
        raise HostKeyMismatch(f"box on {host} offered an unexpected host key type", "re-create it with `devbox up`")
    pins = pinned_keys()
    current = pins.get(alias)
    if current == key:
        return False
    if current is not None and not replace:
        raise HostKeyMismatch(
            f"the host key of {alias} changed since it was pinned",
            f"if the box was re-made on purpose run `devbox up {host} --repin`; otherwise investigate",
        )
    pins[alias] = key
    _atomic_write(devbox_known_hosts_path(), "".join(f"{a} {k}\n" for a, k in sorted(pins.items())), 0o644)
    return True


@_serialized
def unpin(host: str) -> bool:
    pins = pinned_keys()
    if pins.pop(BOX_PREFIX + host, None) is None:
        return False
    _atomic_write(devbox_known_hosts_path(), "".join(f"{a} {k}\n" for a, k in sorted(pins.items())), 0o644)
    return True
