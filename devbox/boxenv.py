"""The box's environment: `env`, `secrets` and git settings from devbox.toml, read on this
machine and written from the host into a volume the box mounts read-only.

Values travel only as the writer's stdin (a tar, like the keys): never argv, `-e`, labels,
output or the spec hash. The box keeps a digest beside them, so `up` rewrites the volume
live (same container) only when something changed. The box's login shells, ssh commands,
jobs and notebooks export them (images/ssh/devbox-env.sh).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from devbox.config import BoxSpec
from devbox.errors import ConfigError

SECRETS_DIR = "/etc/devbox/secrets"                 # the secrets volume, read-only in the box
CURRENT = f"{SECRETS_DIR}/current"                  # -> the generation the last write made
ENV_SCRIPT = "/etc/profile.d/devbox-env.sh"         # exports them; jobs source it too
MAX_SECRET_BYTES = 64 * 1024
CREDENTIAL_USER = "x-access-token"                   # what GitHub, GitLab and Gitea take with a token

# As the box user, with no network: unpack into a new generation, switch `current` to it
# with one rename (a shell reading the old one never sees half a set), drop older ones.
WRITE_SECRETS = (
    f"set -eu; umask 077; cd {SECRETS_DIR}; new=$(mktemp -d g.XXXXXXXX); tar -x -f - -C \"$new\"; "
    "old=$(readlink current 2>/dev/null || true); rm -f .current.new; ln -s \"$new\" .current.new; mv -Tf .current.new current; "
    'for g in g.*; do [ "$g" = "$new" ] || [ "$g" = "$old" ] || rm -rf "$g"; done'
)

# In the box (facts.py asks it with the keys): the digest, plain variables, secrets' names only.
READ_BOX_ENV = (
    f'if [ -d {CURRENT} ]; then printf "digest %s\\n" "$(cat {CURRENT}/digest 2>/dev/null)"; '
    f'for f in {CURRENT}/env/*; do [ -f "$f" ] && printf "env %s=%s\\n" "${{f##*/}}" "$(cat "$f")"; done; '
    f'for f in {CURRENT}/secret/*; do [ -f "$f" ] && echo "secret ${{f##*/}}"; done; fi; true'
)


@dataclass(frozen=True)
class BoxEnv:
    """What the volume should hold; the secret fields never show in a repr or a log."""

    env: tuple[tuple[str, str], ...] = ()
    secrets: tuple[tuple[str, str], ...] = field(default=(), repr=False)   # (NAME, value)
    git_identity: str = ""
    git_tokens: tuple[tuple[str, str], ...] = field(default=(), repr=False)   # (host or "" for any, token)

    @property
    def digest(self) -> str:
        data = [list(self.env), list(self.secrets), self.git_identity, list(self.git_tokens)]
        return hashlib.sha256(json.dumps(data).encode()).hexdigest()

    def describe(self) -> str:
        """What is written, by name only (for --dry-run and progress)."""
        parts = [f"{len(self.secrets)} secret(s)" + (f" ({', '.join(n for n, _ in self.secrets)})" if self.secrets else ""),
                 f"{len(self.env)} variable(s)"]
        parts += ["git identity"] * bool(self.git_identity) + ["git credentials"] * bool(self.git_tokens)
        return ", ".join(parts)

    def files(self) -> dict[str, str]:
        """The volume's files, path -> text."""
        out = {"digest": self.digest + "\n"}
        out.update({f"env/{name}": value + "\n" for name, value in self.env})
        out.update({f"secret/{name}": value + "\n" for name, value in self.secrets})
        for host, token in self.git_tokens:   # git-credential-devbox reads them by host
            out[f"git/host/{host}" if host else "git/token"] = token + "\n"
        if self.git_identity or self.git_tokens:
            out["gitconfig"] = self.gitconfig()
        return out

    def gitconfig(self) -> str:
        """Included by the image's /etc/gitconfig (lowest precedence: the user's ~/.gitconfig wins)."""
        lines = []
        if self.git_identity:
            name, email = self.git_identity[:-1].split(" <", 1)
            lines += ["[user]", f'\tname = "{name}"', f'\temail = "{email}"']
        for host, _ in self.git_tokens:   # git-credential-devbox in the image; asked only for these
            lines += [f'[credential "https://{host}"]' if host else "[credential]", "\thelper = devbox"]
        return "\n".join(lines) + "\n"

    def payload(self) -> bytes:
        """The writer's stdin: a tar of files() (0400, fixed times)."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path, text in sorted(self.files().items()):
                data = text.encode()
                info = tarfile.TarInfo(path)
                info.size, info.mode, info.mtime = len(data), 0o400, 0
                tar.addfile(info, io.BytesIO(data))
        return buffer.getvalue()


@dataclass
class InBox:
    """What the box's volume holds now (READ_BOX_ENV's answer)."""

    digest: str = ""
    env: dict[str, str] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()


def parse_box_env(text: str) -> InBox:
    found = InBox()
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "digest":
            found.digest = rest.strip()
        elif kind == "env" and "=" in rest:
            name, value = rest.split("=", 1)
            found.env[name] = value
        elif kind == "secret" and rest:
            found.secrets += (rest,)
    return found


def read_source(name: str, source: str) -> str:
    """A secret's value from `env:VAR` or `file:PATH` on this machine; a missing one is a
    one-line error naming the secret and where it looked (the value is never in a message)."""
    kind, _, where = source.partition(":")
    if kind == "env":
        value = os.environ.get(where)
        if value is None:
            raise ConfigError(f"secret {name}: environment variable {where} is not set on this machine (looked at {source})",
                              f"export {where} before running devbox, or point {name} at a file (\"file:PATH\")")
    else:
        value = _read_file(name, source, Path(where).expanduser())
    if any(c in value for c in "\0\n\r"):
        raise ConfigError(f"secret {name} ({source}) holds a NUL or a line break", "a secret is one line of text")
    if len(value.encode()) > MAX_SECRET_BYTES:
        raise ConfigError(f"secret {name} ({source}) is larger than {MAX_SECRET_BYTES // 1024} KiB", "a secret is a token, not a file")
    return value


def _read_file(name: str, source: str, path: Path) -> str:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_SECRET_BYTES + 2)
    except FileNotFoundError:
        raise ConfigError(f"secret {name}: {path} does not exist (looked at {source})",
                          f"write the value to {path}, or point {name} elsewhere in devbox.toml") from None
    except OSError as exc:
        raise ConfigError(f"secret {name}: cannot read {path}: {exc.strerror}", "check the path and its permissions") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"secret {name}: {path} is not UTF-8 text", "a secret is one line of text") from None
    return text.removesuffix("\n").removesuffix("\r")   # the newline an editor or `echo` adds


def read_box_env(spec: BoxSpec) -> BoxEnv:
    """Every value the box should have, read now (before anything on the host changes)."""
    secrets = tuple((name, read_source(name, source)) for name, source in spec.secrets)
    tokens = tuple((host, read_source(f"git_credentials {host or '(any host)'}", source)) for host, source in spec.git_credentials)
    return BoxEnv(spec.env, secrets, spec.git_identity, tokens)
