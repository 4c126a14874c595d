"""Team public keys: validated with `cryptography`, stored one `<name>.pub` per person.

A key file may hold exactly one public key and nothing else: private keys, weak or
unknown types, broken blobs and `authorized_keys` options (command=, from=, …) are
refused with KeyRejected, so a careless paste can never widen access to a box.
Error messages never echo key material: a pasted private key must not end up in a
terminal scrollback, a CI log or a bug report.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import struct
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable

from devbox.errors import KeyRejected

# restrict = no agent/X11/port forwarding, no pty, no ~/.ssh/rc; then re-allow only
# a pty (shells, tmux) and port forwarding (VS Code Remote-SSH uses -L; the box's
# sshd_config narrows it to local forwards with AllowTcpForwarding local).
AUTHORIZED_KEY_OPTIONS = "restrict,port-forwarding,pty"
AGENT_OPTION = "agent-forwarding"   # forward_agent = true, only on a box of one person's keys
HEADER = "# managed by devbox: do not edit, changes are overwritten by `devbox keys sync`\n"

MIN_RSA_BITS = 3072
MAX_RSA_BITS = 16384          # OpenSSH refuses larger moduli (SSH_RSA_MAXIMUM_MODULUS_SIZE)
MAX_LINE_CHARS = 16384        # far above any accepted key; bounds work on hostile input
MAX_FILE_BYTES = 64 * 1024    # a key file is one short line; /dev/zero must not fill memory
NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")
NAME_RULE = "names are 1-32 characters of a-z 0-9 . _ - starting with a letter or digit"

SK_ED25519 = "sk-ssh-ed25519@openssh.com"
SK_ECDSA = "sk-ecdsa-sha2-nistp256@openssh.com"
ECDSA_TYPES = {"ecdsa-sha2-nistp256": 256, "ecdsa-sha2-nistp384": 384, "ecdsa-sha2-nistp521": 521}
STANDARD_TYPES = {"ssh-ed25519", "ssh-rsa", *ECDSA_TYPES}
# How many SSH strings each blob holds: type first, nothing after the last one.
WIRE_FIELDS = {"ssh-ed25519": 2, "ssh-rsa": 3, **{t: 3 for t in ECDSA_TYPES}, SK_ED25519: 3, SK_ECDSA: 4}
KNOWN_TYPES = set(WIRE_FIELDS)
REFUSED_TYPES = {"ssh-dss": "DSA keys are broken (1024-bit, SHA-1)"}

# authorized_keys option names (sshd(8) "AUTHORIZED_KEYS FILE FORMAT"); matched case-insensitively.
OPTION_NAMES = {
    "agent-forwarding", "cert-authority", "command", "environment", "expiry-time", "from",
    "no-agent-forwarding", "no-port-forwarding", "no-pty", "no-user-rc", "no-x11-forwarding",
    "permitlisten", "permitopen", "port-forwarding", "principals", "pty", "no-touch-required",
    "restrict", "tunnel", "touch-required", "user-rc", "verify-required", "x11-forwarding",
}
# Only tokens shaped like a key type name are ever echoed (base64 never contains '-').
SAFE_TO_ECHO = re.compile(r"[a-z0-9]+(-[a-z0-9]+)+(@[a-z0-9.-]+)?")
DEFAULT_REMEDY = "give the .pub file made by ssh-keygen (one line: TYPE BASE64 [COMMENT])"


@dataclass(frozen=True)
class PublicKey:
    """One validated, normalized public key."""

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
        """The normalized `type blob comment` line, without options."""
        return f"{self.type} {self.blob} {self.comment}".rstrip()

    def with_comment(self, comment: str) -> "PublicKey":
        return replace(self, comment=_clean_comment(comment))


# ---------------------------------------------------------------- parsing helpers


def _reject(reason: str, remedy: str = DEFAULT_REMEDY):
    raise KeyRejected(reason, remedy)


def _echo(token: str) -> str:
    """A token for an error message, or a placeholder when it might be key material."""
    return repr(token) if len(token) <= 64 and SAFE_TO_ECHO.fullmatch(token) else "(not shown)"


def _clean_comment(comment: str) -> str:
    """Drop control characters: a comment is shown by `keys list` and written to authorized_keys."""
    kept = (ch if ch.isprintable() else " " if ch.isspace() else "" for ch in comment)
    return " ".join("".join(kept).split())


def _read_string(data: bytes, offset: int) -> tuple[bytes, int]:
    """One SSH wire string (uint32 length + bytes) starting at `offset`."""
    if offset + 4 > len(data):
        _reject("the key blob is truncated")
    (length,) = struct.unpack(">I", data[offset : offset + 4])
    end = offset + 4 + length
    if end > len(data):
        _reject("the key blob is truncated")
    return data[offset + 4 : end], end


def _wire_fields(blob: bytes, count: int) -> list[bytes]:
    """Exactly `count` SSH strings and nothing after them (trailing bytes are refused)."""
    fields, offset = [], 0
    for _ in range(count):
        value, offset = _read_string(blob, offset)
        fields.append(value)
    if offset != len(blob):
        _reject("the key blob has trailing bytes")
    return fields


def _decode_blob(b64: str) -> bytes:
    """Strict base64: no stray characters, correct padding."""
    try:
        return base64.b64decode(b64.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        _reject("the key's base64 is malformed or truncated", "copy the whole line of the .pub file again")


# ---------------------------------------------------------------- per-type checks


def _bits_of_standard(key_type: str, b64: str) -> int:
    """ed25519, RSA and ECDSA: cryptography validates the key itself."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    try:
        key = load_ssh_public_key(f"{key_type} {b64}".encode())
    except Exception as exc:  # ValueError, UnsupportedAlgorithm, …: all mean "not a key"
        _reject(f"not a valid {key_type} key ({exc.__class__.__name__})")
    if isinstance(key, rsa.RSAPublicKey):
        return _check_rsa_bits(key.key_size)
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.key_size != ECDSA_TYPES[key_type]:
            _reject(f"the key says {key_type} but holds a {key.curve.name} point")
        return key.curve.key_size
    return 256


def _check_rsa_bits(bits: int) -> int:
    if bits < MIN_RSA_BITS:
        _reject(f"RSA key of {bits} bits is too weak",
                f"use ed25519 (ssh-keygen -t ed25519) or RSA of at least {MIN_RSA_BITS} bits")
    if bits > MAX_RSA_BITS:
        _reject(f"RSA key of {bits} bits is larger than OpenSSH accepts", "use ed25519 (ssh-keygen -t ed25519)")
    return bits


def _bits_of_sk(key_type: str, fields: list[bytes]) -> int:
    """FIDO (sk-) keys: cryptography cannot load them, so check their wire format by hand."""
    from cryptography.hazmat.primitives.asymmetric import ec

    if key_type == SK_ED25519:
        _, point, application = fields
        if len(point) != 32:
            _reject("sk-ssh-ed25519 key has a wrong-length public point")
    else:
        _, curve, point, application = fields
        if curve != b"nistp256":
            _reject("sk-ecdsa key names the wrong curve")
        try:
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        except Exception:
            _reject("sk-ecdsa key has an invalid curve point")
    # ssh-keygen only makes applications starting with "ssh:"; anything else is not an SSH key.
    if not application.startswith(b"ssh:"):
        _reject("security-key application must start with ssh:")
    return 256


# ---------------------------------------------------------------- whole lines and texts


def _looks_private(text: str) -> bool:
    return "PRIVATE KEY" in text or "PuTTY-User-Key-File" in text or "BEGIN SSH2 ENCRYPTED" in text


def _foreign_format(text: str) -> str | None:
    """A remedy when the text is a public key in a format other than OpenSSH's one line."""
    if "---- BEGIN SSH2 PUBLIC KEY ----" in text:
        return "this is an RFC 4716 (SSH2) public key: convert it with `ssh-keygen -i -f FILE`"
    if "-----BEGIN PUBLIC KEY-----" in text or "-----BEGIN RSA PUBLIC KEY-----" in text:
        return "this is a PEM public key: convert it with `ssh-keygen -i -m PKCS8 -f FILE`"
    return None


def _looks_like_options(line: str) -> bool:
    """True when a line starts with authorized_keys options rather than a key type."""
    first = line.split(None, 1)[0]
    names = {opt.split("=", 1)[0].lower() for opt in first.split(",")}
    later_type = any(token in KNOWN_TYPES or token in REFUSED_TYPES for token in line.split()[1:])
    return bool(names & OPTION_NAMES) or "=" in first or ("," in first and later_type)


def _check_type(key_type: str, line: str) -> None:
    """Refuse DSA, certificates, options and unknown types with a reason for each."""
    if key_type in REFUSED_TYPES:
        _reject(f"{key_type} refused: {REFUSED_TYPES[key_type]}", "make an ed25519 key: ssh-keygen -t ed25519")
    if key_type in KNOWN_TYPES:
        return
    if _looks_like_options(line):
        _reject("authorized_keys options are not allowed in a key file",
                "remove everything before the key type (command=, from=, environment=, restrict, …)")
    if key_type.endswith("-cert-v01@openssh.com"):
        _reject("SSH certificates are not accepted", "give the plain public key (.pub), not the -cert.pub")
    _reject(f"unknown key type {_echo(key_type)}", "use ed25519, ECDSA, RSA >= 3072 or a FIDO (sk-) key")


def _parse_line(line: str) -> PublicKey:
    """One `TYPE BASE64 [COMMENT]` line to a validated PublicKey."""
    if len(line) > MAX_LINE_CHARS:
        _reject(f"the key line is longer than {MAX_LINE_CHARS} characters")
    parts = line.split(None, 2)
    key_type = parts[0]
    _check_type(key_type, line)
    if len(parts) < 2:
        _reject("the key has no base64 blob", "copy the whole line of the .pub file again")
    blob = _decode_blob(parts[1])
    inner, _ = _read_string(blob, 0)
    inner_type = inner.decode("latin-1")
    if inner_type != key_type:
        _reject(f"the key says {key_type} but its blob holds {_echo(inner_type)}",
                "copy the .pub line unchanged; do not edit the type")
    fields = _wire_fields(blob, WIRE_FIELDS[key_type])
    if key_type in STANDARD_TYPES:
        bits = _bits_of_standard(key_type, parts[1])
    else:
        bits = _bits_of_sk(key_type, fields)
    comment = _clean_comment(parts[2]) if len(parts) > 2 else ""
    return PublicKey(key_type, base64.b64encode(blob).decode(), comment, bits)


def _looks_like_key(line: str) -> bool:
    """A line that starts as a key would (a type, a certificate, or options before one)."""
    first = line.split(None, 1)[0]
    return (first in KNOWN_TYPES or first in REFUSED_TYPES or first.endswith("-cert-v01@openssh.com")
            or _looks_like_options(line))


def _key_lines(text: str) -> list[str]:
    """Non-blank lines that are not `#` comments (a leading BOM is tolerated)."""
    stripped = (line.strip() for line in text.lstrip("\ufeff").splitlines())
    return [line for line in stripped if line and not line.startswith("#")]


def parse_public_keys(text: str, allow_many: bool = False) -> list[PublicKey]:
    """Every key in `text`; more than one only with allow_many. Raises only KeyRejected."""
    if not isinstance(text, str):
        _reject("a key file must be text")
    if _looks_private(text):
        # Never echo any of it: this may be someone's private key.
        _reject("this is a PRIVATE key: it never leaves your laptop", "give the matching .pub file instead")
    foreign = _foreign_format(text)
    if foreign:
        _reject("not an OpenSSH public key line", foreign)
    lines = _key_lines(text)
    if not lines:
        _reject("no public key found")
    stray = next((line for line in lines[1:] if not _looks_like_key(line)), None)
    if stray is not None:
        number = next(n for n, line in enumerate(text.lstrip("\ufeff").splitlines(), 1) if line.strip() == stray)
        _reject(f"line {number} is not a key: a public key is one line, its comment included",
                "join its comment onto the key's line (a wrapped or pasted comment broke it), or remove that line")
    if len(lines) > 1 and not allow_many:
        _reject("several keys in one file", "give one key per person, or pass --all to add them all")
    try:
        return [_parse_line(line) for line in lines]
    except KeyRejected:
        raise
    except Exception as exc:  # any parser surprise is still just a rejected key
        raise KeyRejected(f"not a valid public key ({exc.__class__.__name__})", DEFAULT_REMEDY) from None


def parse_public_key(text: str) -> PublicKey:
    """Exactly one key, else KeyRejected."""
    return parse_public_keys(text)[0]


# ---------------------------------------------------------------- rendering


def render_authorized_keys(keys: Iterable[PublicKey], agent: bool = False) -> str:
    """The box's authorized_keys: restricted options on every key, one line per distinct blob.

    Sorted by fingerprint (and the line, for duplicates) so the same set always renders
    byte-identically, whatever order the keys came in: sync compares texts.
    """
    unique: dict[str, PublicKey] = {}
    for key in sorted(keys, key=lambda k: (k.fingerprint, k.line())):
        unique.setdefault(key.blob, key)
    options = AUTHORIZED_KEY_OPTIONS + (f",{AGENT_OPTION}" if agent else "")
    return HEADER + "".join(f"{options} {k.line()}\n" for k in unique.values())


def installed_keys(authorized_keys: str) -> dict[str, str]:
    """Fingerprint -> name (the comment) of each key in a file render_authorized_keys wrote."""
    found: dict[str, str] = {}
    for line in authorized_keys.splitlines():
        words = line.split()
        if words and words[0].startswith(AUTHORIZED_KEY_OPTIONS):   # with forward_agent: ",agent-forwarding" too
            words = words[1:]
        if len(words) < 2 or line.startswith("#"):
            continue
        try:
            found[PublicKey(words[0], words[1], "", 0).fingerprint] = words[2] if len(words) > 2 else ""
        except (binascii.Error, ValueError):
            continue
    return found


def keyset_fingerprint(keys: Iterable[PublicKey]) -> str:
    """12 hex chars over the sorted distinct fingerprints: a stable container label."""
    joined = "\n".join(sorted({k.fingerprint for k in keys}))
    return hashlib.sha256(joined.encode()).hexdigest()[:12]


def validate_name(name: str) -> str:
    """A person's name, safe as a file stem: ^[a-z0-9][a-z0-9._-]{0,31}$ (no trailing newline)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        shown = repr(name[:40]) if isinstance(name, str) else type(name).__name__
        raise KeyRejected(f"invalid name {shown}", NAME_RULE)
    return name


# ---------------------------------------------------------------- the keys/ folder


def read_key_text(source) -> str:
    """A key file's text (a path, or a binary stream such as stdin), read up to MAX_FILE_BYTES."""
    what = "standard input" if hasattr(source, "read") else str(source)
    try:
        if hasattr(source, "read"):
            data = source.read(MAX_FILE_BYTES + 1)
        else:
            with open(source, "rb") as handle:
                data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise KeyRejected(f"cannot read {what}: {exc.strerror or exc.__class__.__name__}", "give the path of a .pub file") from None
    if len(data) > MAX_FILE_BYTES:
        _reject(f"{what} is larger than {MAX_FILE_BYTES // 1024} KiB: not a public key file", "give the .pub file made by ssh-keygen")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        _reject(f"{what} is not text", "give the .pub file made by ssh-keygen")


def _atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    """Write beside the target (its folder made if need be), then rename: readers never see a
    half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    except OSError as exc:
        raise KeyRejected(f"cannot write {path}: {exc.strerror}", "pass --keys with a folder you can write") from None
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_key_file(path: Path) -> list[PublicKey]:
    """All keys in one keys/*.pub; any problem is a KeyRejected naming the file."""
    try:
        return parse_public_keys(read_key_text(path), allow_many=True)
    except KeyRejected as exc:
        raise KeyRejected(f"{path}: {exc.message}", exc.remedy or "fix or remove the file") from None


class KeyStore:
    """The keys/ folder: one <name>.pub per person, plus `revoked` fingerprints."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    @property
    def revoked_path(self) -> Path:
        return self.directory / "revoked"

    @property
    def added_path(self) -> Path:
        """When each key was added (`fingerprint epoch name`): a revocation lists what changed since."""
        return self.directory / "added"

    def _path(self, name: str) -> Path:
        return self.directory / f"{validate_name(name)}.pub"

    def _names(self) -> list[str]:
        return sorted(p.stem for p in self.directory.glob("*.pub") if not p.name.startswith("."))

    def add(self, name: str, text: str, allow_many: bool = False, replace: bool = False) -> list[PublicKey]:
        """Validate and store NAME's key(s), commented with NAME; re-adding un-revokes them."""
        path = self._path(name)
        keys = [k.with_comment(name) for k in parse_public_keys(text, allow_many)]
        if path.exists() and not replace:
            raise KeyRejected(f"{name} already has a key in {self.directory}",
                              f"pass --replace, or revoke it first (devbox keys revoke {name})")
        self._refuse_shared(name, keys)
        _atomic_write(path, "".join(k.line() + "\n" for k in keys))
        added = {k.fingerprint for k in keys}
        self._write_revoked([line for line in self._revoked_lines() if line.split()[0] not in added])
        now = int(time.time())
        kept = [line for line in _lines(self.added_path) if line.split()[0] not in added]
        _atomic_write(self.added_path, "".join(line + "\n" for line in kept + [f"{k.fingerprint} {now} {name}" for k in keys]))
        return keys

    def added_times(self) -> dict[str, int]:
        """Fingerprint -> when `keys add` stored it (keys added before devbox recorded it: absent)."""
        times = {}
        for line in _lines(self.added_path):
            words = line.split()
            if len(words) >= 2 and words[1].isdigit():
                times[words[0]] = int(words[1])
        return times

    def list(self) -> list[tuple[str, PublicKey]]:
        """(name, key) for every key in keys/*.pub, names sorted."""
        out: list[tuple[str, PublicKey]] = []
        for name in self._names():
            path = self.directory / f"{name}.pub"
            if not NAME_RE.fullmatch(name):
                raise KeyRejected(f"{path}: file name is not a valid person name", NAME_RULE)
            out += [(name, key) for key in _read_key_file(path)]
        return out

    def _refuse_shared(self, name: str, keys: list[PublicKey]) -> None:
        """One key, one person: a key under two names would survive revoking either of them."""
        if not self.directory.is_dir():
            return
        new = {k.fingerprint for k in keys}
        for holder, key in self.list():
            if holder != name and key.fingerprint in new:
                raise KeyRejected(f"this key ({key.fingerprint}) is already {holder}'s, in {self.directory}/{holder}.pub",
                                  f"give {name} their own key, or revoke {holder} first: `devbox keys revoke {holder}`")

    def revoke(self, name: str) -> list[PublicKey]:
        """Remove NAME's file and record its fingerprints so every later sync drops them."""
        path = self._path(name)
        if not path.exists():
            known = ", ".join(self._names()) or "none"
            raise KeyRejected(f"no key named {name!r}", f"known names: {known}")
        keys = _read_key_file(path)
        self._write_revoked(self._revoked_lines() + [f"{k.fingerprint} {name}" for k in keys])
        path.unlink()
        return keys

    def _revoked_lines(self) -> list[str]:
        return _lines(self.revoked_path)

    def _write_revoked(self, lines: list[str]) -> None:
        if lines or self.revoked_path.exists():
            _atomic_write(self.revoked_path, "".join(line + "\n" for line in lines))

    def revoked_fingerprints(self) -> set[str]:
        return {line.split()[0] for line in self._revoked_lines()}

    def active_keys(self, names: tuple[str, ...] = ()) -> list[PublicKey]:
        """Every stored key whose fingerprint is not revoked (only those of `names`, when given)."""
        return [key for _, key in self.active(names)]

    def active(self, names: tuple[str, ...] = ()) -> list[tuple[str, PublicKey]]:
        """(name, key) for every stored key whose fingerprint is not revoked (only of `names`, when given)."""
        revoked = self.revoked_fingerprints()
        return [(name, key) for name, key in self.list() if key.fingerprint not in revoked and (not names or name in names)]


def _lines(path: Path) -> list[str]:
    """The non-comment lines of one of keys/' text files (revoked, added); none when absent."""
    if not path.exists():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyRejected(f"{path}: cannot read it ({exc.__class__.__name__})",
                          "it must be a text file of fingerprints written by devbox; restore it from version control") from None
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


# ---------------------------------------------------------------- new key pairs


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with `mode`; O_EXCL so nothing (not even a symlink) is ever overwritten."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise KeyRejected(f"{path} already exists", "choose another path; devbox never overwrites a key") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def generate_keypair(path: Path) -> PublicKey:
    """A new ed25519 pair: private 0600 in a 0700 folder, never overwriting anything."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path).expanduser()
    pub_path = Path(str(path) + ".pub")
    for existing in (path, pub_path):
        if existing.exists() or existing.is_symlink():
            raise KeyRejected(f"{existing} already exists", "choose another path; devbox never overwrites a key")
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    key = parse_public_key(f"{public.decode()} {os.environ.get('USER', 'devbox')}@devbox")
    try:
        if not path.parent.exists():
            path.parent.mkdir(mode=0o700, parents=True)
            os.chmod(path.parent, 0o700)  # mkdir's mode is filtered by the umask
        _write_new(path, private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                               serialization.NoEncryption()), 0o600)
        _write_new(pub_path, (key.line() + "\n").encode(), 0o644)
    except OSError as exc:
        raise KeyRejected(f"cannot write {exc.filename or path}: {exc.strerror}", "choose a path in a folder you can write") from None
    return key
