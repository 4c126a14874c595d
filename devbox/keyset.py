"""Which public keys a box lets in: the team's keys/ minus revocations, or the user's own."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from devbox.errors import ConfigError

DEFAULT_IDENTITIES = ("id_ed25519", "id_ecdsa", "id_rsa", "id_ed25519_sk", "id_ecdsa_sk")


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
    fingerprints: tuple[str, ...] = ()   # each key's SHA256:…, to find the identity that gets in
    added: tuple[tuple[str, int], ...] = ()   # (fingerprint, epoch) of every key keys/ recorded adding
    people: tuple[str, ...] = ()         # whose keys they are (keys/NAME.pub; "you" for your own key), sorted
    keys: tuple = field(default=(), repr=False, compare=False)   # the PublicKeys, to render again (forward_agent)

    def added_at(self, fingerprint: str) -> int | None:
        return dict(self.added).get(fingerprint)


def desired_keys(directory: Path | None = None, identity: Path | None = None, admits: tuple[str, ...] = (),
                 box: str = "") -> KeySet:
    """The keys a box lets in, read from keys/ now: every team key (a host's own box), or
    only those of `admits` (a named box: its owner and the admins)."""
    from devbox.keys import KeyStore, keyset_fingerprint, parse_public_key, render_authorized_keys

    store = KeyStore(keys_dir(directory))
    named = store.active(admits) if store.directory.is_dir() else []
    notice = ""
    if admits and not named:
        raise ConfigError(f"{box}: none of {', '.join(admits)} (the box's owner and admins) has a key in {store.directory}",
                          "add the owner's key with `devbox keys add NAME FILE`")
    if not named:
        pub = Path(str(identity or default_identity()) + ".pub")
        if not pub.is_file():
            raise ConfigError(f"keys/ is empty and {pub} does not exist", "add team keys with `devbox keys add NAME FILE`")
        named = [("you", parse_public_key(pub.read_text()))]
        notice = f"keys/ has no team keys: installing only your own {pub}"
    keys = [key for _, key in named]
    prints = tuple(sorted({k.fingerprint for k in keys}))
    added = tuple(sorted(store.added_times().items())) if store.directory.is_dir() else ()
    return KeySet(render_authorized_keys(keys), keyset_fingerprint(keys), len(keys), notice, prints, added,
                  tuple(sorted({name for name, _ in named})), tuple(keys))


@dataclass(frozen=True)
class KeySource:
    """Where keys come from (keys/ or --keys); read afresh for each box at the moment its
    keys are written, so a key revoked or added while `up` ran is never undone by it."""

    directory: Path | None = None
    identity: Path | None = None

    def for_box(self, spec) -> KeySet:
        """The box's keys as it installs them (forward_agent: refused unless one person's)."""
        return keys_for_box(spec, desired_keys(self.directory, self.identity, spec.admits, spec.box.name))

    def check(self) -> str:
        """Read keys/ once before any host is touched: a broken folder is one line naming the
        file, never a row per host. Returns what to say once (keys/ has no team keys)."""
        return desired_keys(self.directory, self.identity).notice


# ---------------------------------------------------------------- who a box admits


def admitted_people(spec, keys: KeySet) -> tuple[str, ...]:
    """The people whose keys this box lets in (secrets and a forwarded agent are theirs to
    use): a host's own box admits every team key (or only your own when keys/ is empty), a
    named box its owner and admins (KeySource.for_box reads only theirs)."""
    return keys.people


def keys_for_box(spec, keys: KeySet) -> KeySet:
    """The keys as this box installs them: with `forward_agent`, each key line also allows
    agent forwarding, which only a box of one person may have (anyone the box admits could
    use the forwarded socket to log in wherever that person's agent can)."""
    if not spec.forward_agent:
        return keys
    people = admitted_people(spec, keys)
    if len(people) != 1:
        raise ConfigError(f"{spec.box.name}: forward_agent = true, but the box admits the keys of {len(people)} people "
                          f"({', '.join(people)}): each of them could use your forwarded agent",
                          "set forward_agent = false (use git_credentials for pushes), or give the box one person's keys only "
                          "(a named box of yours, or keys/ of one person)")
    from devbox.keys import render_authorized_keys

    return replace(keys, authorized_keys=render_authorized_keys(keys.keys, agent=True))


def shared_secrets_warning(spec, keys: KeySet) -> str:
    """Said on `up`: secrets on a box several people enter are theirs to read too."""
    people = admitted_people(spec, keys)
    if not (spec.secrets or spec.git_credentials) or len(people) < 2:
        return ""
    return (f"note: {spec.box.name}: the box's secrets are readable by everyone it admits ({', '.join(people)}): "
            "they all log in as the same user")


# ---------------------------------------------------------------- the identity that gets in


@dataclass(frozen=True)
class Identity:
    """The key `ssh devbox-HOST` and verify log in with: a private key file, or, with
    path None, a key only ssh-agent holds (`public_key` is then its "type base64")."""

    fingerprint: str
    path: Path | None
    source: str
    public_key: str = ""

    @property
    def note(self) -> str:
        if self.path is None:
            return f"ssh-agent holds your key {self.fingerprint}: the entry names its public half, so the agent offers that key first"
        return ""


def choose_identity(keys: KeySet, configured: str = "", host_files: tuple[str, ...] = (), host: str = "") -> Identity:
    """The first of the user's keys whose public half the box will trust.

    Tried as OpenSSH would offer them: `identity` from devbox.toml (when set, the only
    candidate), the host's IdentityFiles, ~/.ssh/id_*, then ssh-agent. Raised before
    anything on the host changes, so a box nobody can enter is never made.
    """
    files: dict[Path, str] = {}  # each path once, at its first place
    if configured:
        files[Path(configured).expanduser().absolute()] = "identity in devbox.toml"
    else:
        for name in host_files:
            files.setdefault(Path(name).expanduser(), f"IdentityFile of {host}")
        for name in DEFAULT_IDENTITIES:
            files.setdefault(Path.home() / ".ssh" / name, "default key")
    tried: list[str] = []
    for path, source in files.items():
        fingerprint, why = file_fingerprint(path)
        if fingerprint in keys.fingerprints:
            return Identity(fingerprint, path, source)
        if path.exists() or configured:
            tried.append(f"{path} ({fingerprint or why})")
    if not configured:
        for fingerprint, public_key in agent_keys():
            if fingerprint in keys.fingerprints:
                return Identity(fingerprint, None, "ssh-agent", public_key)
            tried.append(f"ssh-agent ({fingerprint})")
    raise ConfigError(
        f"{host}: none of your keys is among the {keys.count} the box will trust "
        f"({', '.join(keys.fingerprints)}); tried {'; '.join(tried) or 'no key found'}",
        f"add yours with `devbox keys add NAME {_first_pub(files)}`, or set identity = PATH in devbox.toml",
    )


def file_fingerprint(path: Path) -> tuple[str, str]:
    """(SHA256 fingerprint, "") of a private key file, or ("", why not).

    The .pub beside it is read first (as OpenSSH does): an encrypted key needs no passphrase.
    """
    import paramiko

    from devbox.keys import parse_public_key

    pub = Path(f"{path}.pub")
    if pub.is_file():
        try:
            return parse_public_key(pub.read_text()).fingerprint, ""
        except (ConfigError, OSError):
            pass  # a weak or odd .pub: the private key may still say who it is
    if not path.is_file():
        return "", "no such file"
    try:
        return paramiko.PKey.from_path(str(path)).fingerprint, ""
    except paramiko.PasswordRequiredException:
        return "", "encrypted, and no .pub beside it"
    except (OSError, ValueError, paramiko.SSHException) as exc:
        return "", f"not a usable private key: {exc.__class__.__name__}"


def agent_keys() -> list[tuple[str, str]]:
    """(fingerprint, "type base64") of each key ssh-agent holds (none without SSH_AUTH_SOCK)."""
    if not os.environ.get("SSH_AUTH_SOCK"):
        return []
    import paramiko

    agent = paramiko.Agent()
    try:
        return [(key.fingerprint, f"{key.get_name()} {key.get_base64()}") for key in agent.get_keys()]
    finally:
        agent.close()


def _first_pub(files: dict[Path, str]) -> str:
    """The first candidate's .pub that exists, for the remedy (else the usual default)."""
    for path in files:
        if Path(f"{path}.pub").is_file():
            return f"{path}.pub"
    return "~/.ssh/id_ed25519.pub"
