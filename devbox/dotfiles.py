"""Dotfiles: a folder on this machine copied into the box's home, never over a file the user
changed there.

The box remembers what devbox wrote (~/.devbox/dotfiles.sha256). A box file is replaced only
when it is missing, is what devbox wrote last time, or is still the image's skeleton copy
(/etc/skel: a fresh home's .bashrc); anything else is the user's own and is kept. Which is
which is decided here from the box's checksums (a pure function), then one tar goes in.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import shlex
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from devbox.config import BoxSpec
from devbox.errors import ConfigError, DevboxError
from devbox.steps import Progress, Step

MANIFEST = ".devbox/dotfiles.sha256"
SKIPPED_DIRS = {".git", ".hg", ".svn"}
# Paths travel as lines of text through sha256sum: no control characters, no backslash.
SAFE_PATH = re.compile(r"^[^\x00-\x1f\x7f\\]+\Z")
MARK = "@@devbox-dotfiles@@"
# stdin: the paths, one a line. Prints the home's sums, the skeleton's, and the manifest.
BOX_SUMS = (
    'list=$(cat); '
    f'printf "%s\\n" "$list" | (cd "$HOME" && xargs -r -d "\\n" sha256sum -- 2>/dev/null); echo {MARK}; '
    f'printf "%s\\n" "$list" | (cd /etc/skel 2>/dev/null && xargs -r -d "\\n" sha256sum -- 2>/dev/null); echo {MARK}; '
    f'cat "$HOME/{MANIFEST}" 2>/dev/null; true'
)
UNPACK = 'umask 022; cd "$HOME" && tar -x --no-same-owner -f -'


@dataclass(frozen=True)
class DotFile:
    path: str            # relative to the folder (and to the home), posix
    sha256: str
    mode: int
    data: bytes = field(repr=False, compare=False)


@dataclass(frozen=True)
class Dotfiles:
    folder: str          # as devbox.toml names it
    files: tuple[DotFile, ...] = ()


@dataclass
class Copied:
    written: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)        # changed in the box: left alone
    manifest: dict[str, str] = field(default_factory=dict)


def read_dotfiles(spec: BoxSpec) -> Dotfiles | None:
    """The folder's regular files (symlinks and VCS folders skipped), read now; None when unset."""
    if not spec.dotfiles:
        return None
    root = Path(spec.dotfiles).expanduser()
    if not root.is_dir():
        raise ConfigError(f"dotfiles = {spec.dotfiles!r}: {root} is not a folder on this machine",
                          "point dotfiles at a folder, e.g. a clone of your dotfiles repository")
    files = []
    for folder, dirs, names in os.walk(root):       # never follows symlinks
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
        for name in sorted(names):
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink() or not path.is_file() or not SAFE_PATH.match(rel):
                continue
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise ConfigError(f"dotfiles: cannot read {path}: {exc.strerror}", "fix its permissions or remove it") from None
            files.append(DotFile(rel, hashlib.sha256(data).hexdigest(), path.stat().st_mode & 0o777, data))
    return Dotfiles(spec.dotfiles, tuple(files))


def parse_sums(text: str) -> dict[str, str]:
    """`sha256sum` lines -> {path: sum}."""
    sums = {}
    for line in text.splitlines():
        digest, sep, path = line.partition("  ")
        if sep and re.match(r"^[0-9a-f]{64}$", digest):
            sums[path.removeprefix("./")] = digest
    return sums


def decide(files: tuple[DotFile, ...], home: dict[str, str], skel: dict[str, str], manifest: dict[str, str]) -> tuple[list[DotFile], Copied]:
    """Which files to write; a box file is the user's unless devbox or the image put it there."""
    write, copied = [], Copied(manifest=dict(manifest))
    for f in files:
        current = home.get(f.path)
        if current == f.sha256:
            copied.manifest[f.path] = f.sha256
        elif current is None or current == manifest.get(f.path) or current == skel.get(f.path):
            write.append(f)
            copied.written.append(f.path)
            copied.manifest[f.path] = f.sha256
        else:
            copied.kept.append(f.path)
    return write, copied


def tar_of(files: list[DotFile], manifest: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        text = "".join(f"{digest}  {path}\n" for path, digest in sorted(manifest.items())).encode()
        for path, data, mode in [*((f.path, f.data, f.mode) for f in files), (MANIFEST, text, 0o600)]:
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def copy_dotfiles(host, spec: BoxSpec, dotfiles: Dotfiles) -> Copied:
    """Two exchanges with the box, as its user: its checksums, then one tar of what may be written."""
    from devbox.box import box_sh

    listing = "".join(f.path + "\n" for f in dotfiles.files).encode()
    parts = (box_sh(host, spec, BOX_SUMS, stdin=listing).stdout.split(MARK + "\n") + ["", ""])[:3]
    home, skel, manifest = (parse_sums(part) for part in parts)
    write, copied = decide(dotfiles.files, home, skel, manifest)
    if write or copied.manifest != manifest:
        done = box_sh(host, spec, UNPACK, stdin=tar_of(write, copied.manifest), check=False)
        if not done.ok:
            raise DevboxError(f"{spec.box.name}: could not copy dotfiles into {spec.home}: {done.stderr.strip()[:200]}",
                              "a dotfile's path may be a folder in the box (or the reverse): rename one of them")
    return copied


@dataclass(frozen=True)
class CopyDotfiles(Step):
    """`dotfiles` into a new box's home (`devbox secrets sync --dotfiles` any time)."""

    spec: BoxSpec | None = None
    dotfiles: Dotfiles | None = None

    def commands(self) -> list[str]:
        n = len(self.dotfiles.files)
        return [f"docker exec -i {shlex.quote(self.spec.box_name)} sh -c {shlex.quote(BOX_SUMS)} < ({n} path(s))",
                f"docker exec -i {shlex.quote(self.spec.box_name)} sh -c {shlex.quote(UNPACK)} < (the files to write, from {self.dotfiles.folder})"]

    def apply(self, host, progress: Progress) -> dict:
        copied = copy_dotfiles(host, self.spec, self.dotfiles)
        if copied.kept:
            progress(f"{self.spec.box.name}: dotfiles kept as changed in the box: {', '.join(copied.kept)}")
        return {"dotfiles_written": copied.written, "dotfiles_kept": copied.kept}
