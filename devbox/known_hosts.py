"""known_hosts read as OpenSSH reads it, to check a host's key on every hop.

paramiko's HostKeys keeps one key per type per host, so a stale line left after a
re-install next to the right one makes it refuse a host OpenSSH accepts; it also
ignores `@revoked` and `@cert-authority` markers. OpenSSH accepts when ANY line
naming the host holds the key, refuses a revoked key, and reads several
UserKnownHostsFile files plus GlobalKnownHostsFile. This module is that, pure.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path

from devbox.errors import HostKeyMismatch, HostUnreachable

DEFAULT_USER_FILES = "~/.ssh/known_hosts ~/.ssh/known_hosts2"
DEFAULT_GLOBAL_FILES = "/etc/ssh/ssh_known_hosts /etc/ssh/ssh_known_hosts2"
REVOKED, CERT_AUTHORITY = "@revoked", "@cert-authority"


@dataclass(frozen=True)
class Line:
    """One key line: where it is, its marker (if any), host patterns, key."""

    path: str
    number: int
    marker: str
    hosts: str
    key_type: str
    blob: bytes

    @property
    def where(self) -> str:
        return f"{self.path}:{self.number}"


def host_name(hostname: str, port: int, alias: str | None = None) -> str:
    """The name a host's key is filed under: HostKeyAlias verbatim, else host or [host]:port."""
    if alias:
        return alias.lower()
    return hostname.lower() if port == 22 else f"[{hostname.lower()}]:{port}"


def parse(text: str, path: str = "known_hosts") -> list[Line]:
    """Key lines of one file; comments, blanks and malformed lines are skipped as OpenSSH does."""
    lines = []
    for number, raw in enumerate(text.splitlines(), 1):
        fields = raw.split()
        if not fields or fields[0].startswith("#"):
            continue
        marker = fields.pop(0) if fields[0].startswith("@") else ""
        if marker not in ("", REVOKED, CERT_AUTHORITY) or len(fields) < 3:
            continue
        try:
            blob = base64.b64decode(fields[2], validate=True)
        except (binascii.Error, ValueError):
            continue
        lines.append(Line(path, number, marker, fields[0], fields[1], blob))
    return lines


def read(paths: list[Path]) -> list[Line]:
    """All key lines of the files that exist, in order (a missing file is no error)."""
    lines: list[Line] = []
    for path in paths:
        try:
            lines += parse(path.read_text(errors="replace"), str(path))
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            continue
    return lines


def _glob(pattern: str, name: str) -> bool:
    """OpenSSH's match_pattern: only `*` and `?` are special (brackets of [host]:port are not)."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern.lower())
    return re.fullmatch(regex, name) is not None


def _hashed_match(entry: str, name: str) -> bool:
    """`|1|salt|hash`: HMAC-SHA1 of the name keyed by the salt (HashKnownHosts yes)."""
    try:
        salt, digest = (base64.b64decode(p) for p in entry[3:].split("|"))
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(hmac.new(salt, name.encode(), hashlib.sha1).digest(), digest)


def names_host(line: Line, name: str) -> bool:
    """Whether the line's host field names `name`: hashed, or patterns where any `!` match vetoes."""
    if line.hosts.startswith("|1|"):
        return _hashed_match(line.hosts, name)
    matched = False
    for pattern in line.hosts.split(","):
        if pattern.startswith("!"):
            if _glob(pattern[1:], name):
                return False
        elif _glob(pattern, name):
            matched = True
    return matched


def key_types(lines: list[Line], name: str) -> list[str]:
    """Key types known for the host, in file order: offered first in the key exchange, as
    OpenSSH does, so a host with several keys shows the one we can check."""
    found = [l.key_type for l in lines if not l.marker and names_host(l, name)]
    return list(dict.fromkeys(found))


def fingerprint(blob: bytes) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def verify(alias: str, name: str, blob: bytes, lines: list[Line]) -> Line:
    """The line that vouches for the host's key, or the error OpenSSH would give.

    Order as OpenSSH: a revoked key refuses whatever else says; then any plain line
    holding the key accepts; lines for the host that all differ are a mismatch.
    """
    mine = [l for l in lines if names_host(l, name)]
    shown = f"{name}" if name == alias.lower() else f"{alias} ({name})"
    for line in mine:
        if line.marker == REVOKED and line.blob == blob:
            raise HostKeyMismatch(f"the host key of {shown} ({fingerprint(blob)}) is revoked in {line.where}",
                                  "the host must get a new key; never remove the @revoked line to get in")
    for line in mine:
        if not line.marker and line.blob == blob:
            return line
    plain = [l for l in mine if not l.marker]
    if plain:
        raise HostKeyMismatch(
            f"the host key of {shown} ({fingerprint(blob)}) matches none of its known_hosts lines "
            f"({', '.join(l.where for l in plain)})",
            f"someone may be intercepting; if the host was re-installed, check the new fingerprint and "
            f"fix it by hand (ssh-keygen -R '{name}')")
    if any(l.marker == CERT_AUTHORITY for l in mine):
        raise HostUnreachable(f"{shown} is trusted only through @cert-authority lines: host certificates are not supported yet",
                              "add the host's plain key to known_hosts (ssh-keyscan, then check the fingerprint)")
    raise HostUnreachable(f"host key of {shown} is not in your known_hosts",
                          f"connect once with `ssh {alias}` and check the fingerprint, then retry")
