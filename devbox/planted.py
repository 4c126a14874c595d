"""What a revoked key holder may have left in a shared home to run as the next person.

Everyone on a shared box is the same user, so anyone can append to ~/.bashrc or drop a
`python` in ~/.local/bin; a revocation cannot undo that, and a re-created box keeps its
home. When a key leaves a box that others still use, `keys sync` lists the start-up and rc
files changed since that key was added, so whoever revoked it can look. By ctime: a key
holder can set a file's mtime back (`touch -d`), not its ctime.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

# Files a shell, tmux, git, Python or ssh reads or runs on someone else's behalf.
STARTUP_FILES = (
    ".profile", ".bashrc", ".bash_profile", ".bash_login", ".bash_logout", ".bash_aliases",
    ".zshenv", ".zprofile", ".zshrc", ".zlogin", ".zlogout", ".config/fish/config.fish", ".config/fish/conf.d/*",
    ".inputrc", ".tmux.conf", ".config/tmux/tmux.conf", ".gitconfig", ".config/git/config", ".vimrc",
    ".ssh/rc", ".ssh/environment", ".pythonrc", ".pythonstartup",
    ".local/bin/*", ".local/lib/python*/site-packages/*.pth", ".local/lib/python*/site-packages/usercustomize.py",
)
SKEW_S = 600    # the laptop recorded the add, the host stamps the files: allow for clocks apart


def listing_script() -> str:
    """One `stat` line (`ctime path`) per start-up file in $HOME that is not the image's own
    copy from /etc/skel. The names are ours, never input: the shell expands the globs, and
    skips one that matched nothing."""
    names = " ".join(STARTUP_FILES)
    return (f'cd "$HOME" 2>/dev/null || exit 0; for f in {names}; do '
            '{ [ -e "$f" ] || [ -L "$f" ]; } && ! cmp -s -- "$f" "/etc/skel/$f" 2>/dev/null && stat -c "%Z %n" -- "$f"; done; true')


@dataclass(frozen=True)
class Changed:
    path: str
    ctime: int

    def text(self) -> str:
        return f"~/{self.path} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(self.ctime))})"


def changed_since(listing: str, since: int | None) -> list[Changed]:
    """The files of `listing` changed after `since` (less SKEW_S); every one when it is unknown."""
    found = []
    for line in listing.splitlines():
        stamp, _, path = line.partition(" ")
        if stamp.isdigit() and path and (since is None or int(stamp) >= since - SKEW_S):
            found.append(Changed(path, int(stamp)))
    return sorted(found, key=lambda c: c.path)
