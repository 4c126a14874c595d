"""Which public keys a box lets in: the team's keys/ minus revocations, or the user's own."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from devbox.errors import ConfigError

DEFAULT_IDENTITIES = ("id_ed25519", "id_ecdsa", "id_rsa")


def keys_dir(explicit: Path | None = None) -> Path:
    """--keys DIR, else $DEVBOX_KEYS, else ./keys, else ~/.config/devbox/keys."""
    if explicit:
        return explicit
    if os.environ.get("DEVBOX_KEYS"):
        return Path(os.environ["DEVBOX_KEYS"])
    local = Path.cwd() / "keys"
    return local if local.is_dir() else Path.home() / ".config" / "devbox" / "keys"


def default_identity() -> Path:
    """The user's first default private key (as OpenSSH tries them)."""
    for name in DEFAULT_IDENTITIES:
        path = Path.home() / ".ssh" / name
        if path.is_file():
            return path
    raise ConfigError("no SSH key found in ~/.ssh (id_ed25519, id_ecdsa, id_rsa)", "make one with `devbox keys gen`")


@dataclass(frozen=True)
class KeySet:
    authorized_keys: str   # the rendered file
    fingerprint: str       # stable hash of the set, for the container label
    count: int
    notice: str = ""


def desired_keys(directory: Path | None = None, identity: Path | None = None) -> KeySet:
    from devbox.keys import KeyStore, keyset_fingerprint, parse_public_key, render_authorized_keys

    store = KeyStore(keys_dir(directory))
    keys = store.active_keys() if store.directory.is_dir() else []
    notice = ""
    if not keys:
        pub = Path(str(identity or default_identity()) + ".pub")
        if not pub.is_file():
            raise ConfigError(f"keys/ is empty and {pub} does not exist", "add team keys with `devbox keys add NAME FILE`")
        keys = [parse_public_key(pub.read_text())]
        notice = f"keys/ has no team keys: installing only your own {pub}"
    return KeySet(render_authorized_keys(keys), keyset_fingerprint(keys), len(keys), notice)
