"""One `devbox up` at a time per box: a lock held on the host for the whole change.

`flock` on a file in the host's /tmp, held by a command that lives as long as our SSH
channel: when devbox ends (or the link drops) the channel closes and the lock is free,
so a crashed `up` never leaves a stale lock behind.
"""
from __future__ import annotations

import shlex
import time
from typing import Callable

from devbox.errors import HostUnreachable
from devbox.remote import Host, close_channel

BUSY = 75          # flock -E: the lock is held by someone else
NO_FLOCK = 127


class HostLock:
    def __init__(self, host: Host, box_name: str):
        self.host, self.path = host, f"/tmp/devbox-{box_name}.lock"
        self.channel = None

    def _try(self, wait_s: float) -> str:
        """'locked', 'busy' or 'unsupported' (no flock on the host)."""
        flags = f"-w {int(wait_s)}" if wait_s else "-n"
        command = (f"command -v flock >/dev/null || exit {NO_FLOCK}; "
                   f"exec flock {flags} -E {BUSY} {shlex.quote(self.path)} sh -c 'echo locked; exec cat >/dev/null'")
        channel = self.host.connection.transport.open_session(timeout=self.host.connect_timeout)
        channel.exec_command(command)
        answer = b""
        while b"locked" not in answer:
            data = channel.recv(64)
            if not data:
                code = channel.recv_exit_status()
                channel.close()
                return "unsupported" if code == NO_FLOCK else "busy"
            answer += data
        self.channel = channel   # stdin stays open: the lock lives as long as this channel
        return "locked"

    def acquire(self, progress: Callable[[str], None], wait_s: float = 900) -> bool:
        """Take the lock; True when another `up` held it first (the caller re-reads the host)."""
        state = self._try(0)
        if state != "busy":
            return False
        progress(f"{self.host.alias}: another `devbox up` is changing this box; waiting for it (up to {wait_s / 60:.0f} min)")
        start = time.monotonic()
        if self._try(wait_s) == "busy":
            raise HostUnreachable(f"{self.host.alias}: another `devbox up` kept the box locked for {time.monotonic() - start:.0f} s",
                                  f"wait for it to finish (or find it: `ssh {self.host.alias} fuser {self.path}`), then re-run")
        return True

    def release(self) -> None:
        """Close the lock's channel (on a link that dropped, the host has freed it already)."""
        if self.channel is not None:
            channel, self.channel = self.channel, None
            close_channel(channel)
