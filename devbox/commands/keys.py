"""`devbox keys add/list/gen/revoke`: the team's keys/ folder (sync lives in commands/sync.py)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from devbox.keys import KeyStore, PublicKey, generate_keypair, read_key_text
from devbox.keyset import keys_dir as resolve_keys_dir

SYNC_NOTE = "run `devbox keys sync --all` to {what} the boxes"


@dataclass
class KeyRow:
    """One key as the commands report it."""

    name: str
    type: str
    bits: int
    fingerprint: str
    comment: str = ""
    revoked: bool = False

    @classmethod
    def of(cls, name: str, key: PublicKey, revoked: bool = False) -> "KeyRow":
        return cls(name, key.type, key.bits, key.fingerprint, key.comment, revoked)

    def as_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        return (f"{self.name:<16} {self.bits:>5} {self.fingerprint}  {self.comment} ({self.type})"
                + ("  REVOKED: never installed (remove the file)" if self.revoked else ""))


class Added(KeyRow):
    def text(self) -> str:
        return f"added {self.name}: {self.type} {self.bits} {self.fingerprint}"


class Revoked(KeyRow):
    def text(self) -> str:
        return f"revoked {self.name}: {self.fingerprint}"


def store(directory: Path | None) -> KeyStore:
    return KeyStore(resolve_keys_dir(directory))


def add_key(directory: Path | None, name: str, source, allow_many: bool, replace: bool) -> list[KeyRow]:
    """Validate and store NAME's key(s); `source` is a path or a binary stream (stdin)."""
    added = store(directory).add(name, read_key_text(source), allow_many=allow_many, replace=replace)
    return [Added.of(name, key) for key in added]


def list_keys(directory: Path | None) -> tuple[list[KeyRow], str]:
    """The rows, and what to say when there are none."""
    keys = store(directory)
    if not keys.directory.is_dir():
        return [], f"no keys in {keys.directory}"
    revoked = keys.revoked_fingerprints()
    return [KeyRow.of(name, key, key.fingerprint in revoked) for name, key in keys.list()], f"no keys in {keys.directory}"


def revoke_key(directory: Path | None, name: str) -> list[KeyRow]:
    return [Revoked.of(name, key) for key in store(directory).revoke(name)]


def generate(path: Path) -> str:
    key = generate_keypair(path)
    return f"wrote {path.expanduser()} and .pub: {key.type} {key.fingerprint}"
