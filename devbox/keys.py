"""Team public keys: validated with `cryptography`, stored one `<name>.pub` per person.

A key file may hold exactly one public key and nothing else: private keys, weak or
unknown types, broken blobs and `authorized_keys` options (command=, from=, …) are
refused with KeyRejected, so a careless paste can never widen access to a box.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable

from devbox.errors import KeyRejected

# restrict = no agent/X11/port forwarding, no pty, no ~/.ssh/rc; then re-allow only
# a pty (shells, tmux) and port forwarding (VS Code Remote-SSH uses -L; the box's
# sshd_config narrows it to local forwards with AllowTcpForwarding local).
AUTHORIZED_KEY_OPTIONS = "restrict,port-forwarding,pty"
HEADER = "# managed by devbox: do not edit, changes are overwritten by `devbox keys sync`\n"
MIN_RSA_BITS = 3072
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,31}$")
ECDSA_CURVES = {"nistp256": 256, "nistp384": 384, "nistp521": 521}
SK_ED25519 = "sk-ssh-ed25519@openssh.com"
SK_ECDSA = "sk-ecdsa-sha2-nistp256@openssh.com"
STANDARD_TYPES = {"ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521"}
KNOWN_TYPES = STANDARD_TYPES | {SK_ED25519, SK_ECDSA}
REFUSED_TYPES = {"ssh-dss": "DSA keys are broken (1024-bit, SHA-1)"}


@dataclass(frozen=True)
class PublicKey:
    type: str
    blob: str
    comment: str
    bits: int

    @property
    def fingerprint(self) -> str:
        """SHA256:… exactly as `ssh-keygen -lf` prints it."""
        digest = hashlib.sha256(base64.b64decode(self.blob)).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")

    def line(self) -> str:
        return f"{self.type} {self.blob} {self.comment}".rstrip()

    def with_comment(self, comment: str) -> "PublicKey":
        return replace(self, comment=comment)


def _reject(reason: str, remedy: str = "give the .pub file made by ssh-keygen (one line: TYPE BASE64 [COMMENT])"):
    raise KeyRejected(reason, remedy)


def _read_string(data: bytes, offset: int) -> tuple[bytes, int]:
    if offset + 4 > len(data):
        _reject("the key blob is truncated")
    (length,) = struct.unpack(">I", data[offset : offset + 4])
    end = offset + 4 + length
    if end > len(data):
        _reject("the key blob is truncated")
    return data[offset + 4 : end], end


def _wire_fields(blob: bytes, count: int) -> list[bytes]:
    """Exactly `count` SSH strings and nothing after them."""
    fields, offset = [], 0
    for _ in range(count):
        value, offset = _read_string(blob, offset)
        fields.append(value)
    if offset != len(blob):
        _reject("the key blob has trailing bytes")
    return fields


def _bits_of_standard(key_type: str, blob: bytes, text: str) -> int:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    try:
        key = load_ssh_public_key(text.encode())
    except (ValueError, TypeError, struct.error) as exc:
        _reject(f"not a valid {key_type} key ({exc.__class__.__name__})")
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            _reject(f"RSA key of {key.key_size} bits is too weak", f"use ed25519 (ssh-keygen -t ed25519) or RSA of at least {MIN_RSA_BITS} bits")
        return key.key_size
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key.curve.key_size
    return 256


def _bits_of_sk(key_type: str, blob: bytes) -> int:
    """FIDO keys: cryptography cannot load them, so check their wire format by hand."""
    from cryptography.hazmat.primitives.asymmetric import ec

    if key_type == SK_ED25519:
        _, point, application = _wire_fields(blob, 3)
        if len(point) != 32:
            _reject("sk-ssh-ed25519 key has a wrong-length public point")
    else:
        _, curve, point, application = _wire_fields(blob, 4)
        if curve != b"nistp256":
            _reject("sk-ecdsa key names the wrong curve")
        try:
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        except ValueError:
            _reject("sk-ecdsa key has an invalid curve point")
    if not application.startswith(b"ssh:"):
        _reject("security-key application must start with ssh:")
    return 256


def _looks_private(text: str) -> bool:
    return "PRIVATE KEY" in text or "PuTTY-User-Key-File" in text or "BEGIN SSH2 ENCRYPTED" in text


def _parse_line(line: str) -> PublicKey:
    parts = line.split(None, 2)
    key_type = parts[0]
    if key_type in REFUSED_TYPES:
        _reject(f"{key_type} refused: {REFUSED_TYPES[key_type]}", "make an ed25519 key: ssh-keygen -t ed25519")
    if key_type not in KNOWN_TYPES:
        if "=" in key_type or key_type.split(",")[0] in ("restrict", "no-pty", "cert-authority", "no-agent-forwarding", "no-port-forwarding", "no-X11-forwarding", "no-user-rc", "pty", "port-forwarding"):
            _reject("authorized_keys options are not allowed in a key file", "remove everything before the key type (command=, from=, environment=, …)")
        _reject(f"unknown key type {key_type[:40]!r}", "use ed25519, ECDSA, RSA >= 3072 or a FIDO (sk-) key")
    if len(parts) < 2:
        _reject("the key has no base64 blob")
    try:
        blob = base64.b64decode(parts[1].encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        _reject("the key's base64 is malformed or truncated")
    inner, _ = _read_string(blob, 0)
    if inner.decode("latin-1") != key_type:
        _reject(f"the key says {key_type} but its blob is {inner.decode('latin-1')[:40]!r}")
    if key_type in STANDARD_TYPES:
        bits = _bits_of_standard(key_type, blob, f"{key_type} {parts[1]}")
    else:
        bits = _bits_of_sk(key_type, blob)
    comment = parts[2].strip() if len(parts) > 2 else ""
    return PublicKey(key_type, base64.b64encode(blob).decode(), comment, bits)


def parse_public_keys(text: str, allow_many: bool = False) -> list[PublicKey]:
    """Every key in `text`; more than one only with allow_many. Raises only KeyRejected."""
    if not isinstance(text, str):
        _reject("a key file must be text")
    if _looks_private(text):
        raise KeyRejected("this is a PRIVATE key: it never leaves your laptop", "give the matching .pub file instead")
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith("#")]
    if not lines:
        _reject("no public key found")
    if len(lines) > 1 and not allow_many:
        raise KeyRejected("several keys in one file", "give one key per person, or pass --all to add them all")
    try:
        return [_parse_line(line) for line in lines]
    except KeyRejected:
        raise
    except Exception as exc:  # any parser surprise is still just a rejected key
        raise KeyRejected(f"not a valid public key ({exc.__class__.__name__})", "give the .pub file made by ssh-keygen") from None


def parse_public_key(text: str) -> PublicKey:
    return parse_public_keys(text)[0]


def render_authorized_keys(keys: Iterable[PublicKey]) -> str:
    unique = {k.blob: k for k in keys}
    ordered = sorted(unique.values(), key=lambda k: k.fingerprint)
    return HEADER + "".join(f"{AUTHORIZED_KEY_OPTIONS} {k.line()}\n" for k in ordered)


def keyset_fingerprint(keys: Iterable[PublicKey]) -> str:
    joined = "\n".join(sorted(k.fingerprint for k in keys))
    return hashlib.sha256(joined.encode()).hexdigest()[:12]


def validate_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise KeyRejected(f"invalid name {name!r}", "names are 1-32 of a-z 0-9 . _ - starting with a letter or digit")
    return name


def _atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


class KeyStore:
    """The keys/ folder: one <name>.pub per person, plus `revoked` fingerprints."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    @property
    def revoked_path(self) -> Path:
        return self.directory / "revoked"

    def add(self, name: str, text: str, allow_many: bool = False, replace: bool = False) -> list[PublicKey]:
        validate_name(name)
        keys = [k.with_comment(name) for k in parse_public_keys(text, allow_many)]
        path = self.directory / f"{name}.pub"
        if path.exists() and not replace:
            raise KeyRejected(f"{name} already has a key in {self.directory}", f"revoke it first (devbox keys revoke {name})")
        self.directory.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, "".join(k.line() + "\n" for k in keys))
        added = {k.fingerprint for k in keys}
        self._write_revoked([line for line in self._revoked_lines() if line.split()[0] not in added])
        return keys

    def list(self) -> list[tuple[str, PublicKey]]:
        out = []
        for path in sorted(self.directory.glob("*.pub")):
            try:
                keys = parse_public_keys(path.read_text(), allow_many=True)
            except KeyRejected as exc:
                raise KeyRejected(f"{path}: {exc.message}", exc.remedy) from None
            out += [(path.stem, k) for k in keys]
        return out

    def revoke(self, name: str) -> list[PublicKey]:
        validate_name(name)
        path = self.directory / f"{name}.pub"
        if not path.exists():
            known = ", ".join(sorted(p.stem for p in self.directory.glob("*.pub"))) or "none"
            raise KeyRejected(f"no key named {name!r}", f"known names: {known}")
        keys = parse_public_keys(path.read_text(), allow_many=True)
        self._write_revoked(self._revoked_lines() + [f"{k.fingerprint} {name}" for k in keys])
        path.unlink()
        return keys

    def _revoked_lines(self) -> list[str]:
        if not self.revoked_path.exists():
            return []
        return [l for l in self.revoked_path.read_text().splitlines() if l.strip() and not l.startswith("#")]

    def _write_revoked(self, lines: list[str]) -> None:
        if lines or self.revoked_path.exists():
            _atomic_write(self.revoked_path, "".join(l + "\n" for l in lines))

    def revoked_fingerprints(self) -> set[str]:
        return {line.split()[0] for line in self._revoked_lines()}

    def active_keys(self) -> list[PublicKey]:
        revoked = self.revoked_fingerprints()
        return [k for _, k in self.list() if k.fingerprint not in revoked]


def generate_keypair(path: Path) -> PublicKey:
    """A new ed25519 pair: private 0600 in a 0700 folder, never overwriting anything."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path).expanduser()
    pub_path = Path(str(path) + ".pub")
    if path.exists() or pub_path.exists():
        raise KeyRejected(f"{path} already exists", "choose another path; devbox never overwrites a key")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    key = parse_public_key(f"{public} {os.environ.get('USER', 'devbox')}@devbox")
    _atomic_write(pub_path, key.line() + "\n")
    return key
