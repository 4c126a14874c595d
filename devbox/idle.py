"""Idle stop, read from the laptop: the `idle_stop` duration and what the box's watcher wrote.

The watcher (images/ssh/idle-watch.sh) runs inside the box. Each sample it rewrites
~/.devbox/idle/state (key=value lines, see IdleState); when it stops the box it prints one
line, `devbox-idle: stopped idle 2h since 2026-12-01T14:02:03Z (...)`, to the box's stdout.
Everything here is pure: callers fetch the texts (cat over SSH, `docker logs`).
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_SECONDS = 30 * 86400
DURATION_RULE = 'a whole number of s, m, h or d from 1s to 30d, e.g. "20s", "90m", "2h"'
STOPPED_PREFIX = "devbox-idle: stopped "
# A line that begins a run of the box: the watcher's own, and sshd's (it logs one on every start).
START_MARKERS = ("devbox-idle: watching", "Server listening on ")
MAX_REASON = 300


def parse_duration(text: str) -> int:
    """"2h" -> 7200. Refuses what is not a positive duration of at most 30 days."""
    match = re.fullmatch(r"([0-9]{1,9})([smhd])", text) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"{text!r} is not a duration: use {DURATION_RULE}")
    seconds = int(match[1]) * UNIT_SECONDS[match[2]]
    if not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"{text!r} is out of range: use {DURATION_RULE}")
    return seconds


@dataclass(frozen=True)
class IdleState:
    """One sample of the watcher: what keeps the box up, and since when nothing did."""

    updated: int
    window: int
    threshold: int
    ssh_sessions: int = 0
    jobs: tuple[str, ...] = ()
    gpu_util: tuple[tuple[int, int], ...] = ()   # (index as the box sees it, percent)
    idle_since: int | None = None

    @classmethod
    def parse(cls, text: str) -> "IdleState":
        """The state file's text; unknown keys are skipped (a newer watcher may add some)."""
        fields = dict(line.partition("=")[::2] for line in text.splitlines() if "=" in line)
        try:
            return cls(
                updated=_count(fields["updated"]),
                window=_count(fields["window"]),
                threshold=_count(fields["threshold"]),
                ssh_sessions=_count(fields.get("ssh_sessions", "0")),
                jobs=tuple(_printable(name) for name in fields.get("jobs", "").split(",") if name),
                gpu_util=tuple(_gpu(pair) for pair in fields.get("gpu_util", "").split(",") if pair),
                idle_since=_count(fields["idle_since"]) if fields.get("idle_since") else None,
            )
        except (KeyError, ValueError) as err:
            raise ValueError(f"not a devbox idle state file ({err})") from None

    def reasons(self) -> list[str]:
        """Why the box is kept up, in the user's words; empty when it is idle."""
        sessions = [f"{self.ssh_sessions} ssh session{'s' if self.ssh_sessions != 1 else ''}"] if self.ssh_sessions else []
        jobs = [f"job {name} running" for name in self.jobs]
        gpus = [f"GPU {index} at {percent} %" for index, percent in self.gpu_util if percent >= self.threshold]
        return sessions + jobs + gpus

    @property
    def stops_at(self) -> int | None:
        """Epoch second the box stops at if nothing happens before; None while it is in use."""
        return None if self.idle_since is None else self.idle_since + self.window


def stopped_reason(docker_logs_tail: str) -> str | None:
    """Why a stopped box stopped ("idle 2h since 2026-12-01T14:02:03Z (...)"), from its logs.

    None when the box's last run did not end by idling: a stop line before a later start (a box
    that idled, was started again and then stopped by hand) is not this stop's reason.
    """
    reason = None
    for line in docker_logs_tail.splitlines():
        line = line.strip()
        if line.startswith(STOPPED_PREFIX):
            reason = _printable(line[len(STOPPED_PREFIX):].strip())[:MAX_REASON] or None
        elif line.startswith(START_MARKERS):
            reason = None
    return reason


def _printable(text: str) -> str:
    """Anyone in the box can write to its logs and home: no escape sequence reaches a terminal."""
    return "".join("?" if unicodedata.category(ch).startswith("C") else ch for ch in text)


def _count(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,12}", text):
        raise ValueError(f"{text!r} is not a whole number")
    return int(text)


def _gpu(pair: str) -> tuple[int, int]:
    index, _, percent = pair.partition(":")
    return _count(index), _count(percent)
