"""One change at a time per Docker engine: a lock held on the host for the whole change.

Every writer of a box takes it: `up` (from its last look at the host to its keys write,
so two boxes never pick the same GPU or port) and `keys sync` (so a revocation is never
overwritten by an `up` that read keys/ earlier). `flock` on a file in the host's /tmp,
named after the engine the host's `docker` talks to (DOCKER_HOST), held by a command
that lives as long as our SSH channel: when devbox ends (or the link drops) the channel
closes and the lock is free, so a crashed `up` never leaves a stale lock behind.
"""
from __future__ import annotations

import time
from typing import Callable

from devbox.errors import HostUnreachable
from devbox.remote import Host, close_channel

BUSY = 75          # flock -E: the lock is held by someone else
NO_FLOCK = 127
NO_FOLDER = 76     # `prepare` could not make the lock's folder


# The lock file of the engine the host's `docker` talks to (boxes of one engine share GPUs and ports).
ENGINE_LOCK = '/tmp/devbox-engine-$(printf %s "${DOCKER_HOST:-}" | cksum | cut -d" " -f1).lock'


class HostLock:
    """`path`: the lock file (a shell word; default the engine's); `prepare`: a command that
    makes its folder first (a Slurm box's folder on shared storage)."""

    def __init__(self, host: Host, path: str = ENGINE_LOCK, prepare: str = ""):
        self.host, self.path, self.prepare = host, path, prepare
        self.channel = None

    def _try(self, wait_s: float) -> str:
        """'locked', 'busy' or 'unsupported' (no flock on the host)."""
        flags = f"-w {int(wait_s)}" if wait_s else "-n"
        command = (f"command -v flock >/dev/null || exit {NO_FLOCK}; {self.prepare}"
                   f'exec flock {flags} -E {BUSY} "{self.path}" sh -c \'echo locked; exec cat >/dev/null\'')
        channel = self.host.connection.transport.open_session(timeout=self.host.connect_timeout)
        channel.exec_command(command)
        answer = b""
        while b"locked" not in answer:
            data = channel.recv(64)
            if not data:
                code = channel.recv_exit_status()
                channel.close()
                if code == NO_FOLDER:
                    raise HostUnreachable(f"{self.host.alias}: cannot make the folder of lock {self.path}",
                                          "check the folder exists and your user may write it there")
                return "unsupported" if code == NO_FLOCK else "busy"
            answer += data
        self.channel = channel   # stdin stays open: the lock lives as long as this channel
        return "locked"

    def acquire(self, progress: Callable[[str], None], wait_s: float = 900) -> bool:
        """Take the lock (at once if this object holds it); True when another devbox held it first."""
        if self.channel is not None:
            return False
        state = self._try(0)
        if state != "busy":
            return False
        progress(f"{self.host.alias}: another devbox command is changing a box on this host; waiting for it (up to {wait_s / 60:.0f} min)")
        start = time.monotonic()
        if self._try(wait_s) == "busy":
            raise HostUnreachable(f"{self.host.alias}: another devbox command kept the host's boxes locked for {time.monotonic() - start:.0f} s",
                                  f"wait for it to finish (or find it: `ssh {self.host.alias} 'fuser /tmp/devbox-engine-*.lock'`), then re-run")
        return True

    def __enter__(self) -> "HostLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        """Close the lock's channel (on a link that dropped, the host has freed it already)."""
        if self.channel is not None:
            channel, self.channel = self.channel, None
            close_channel(channel)
