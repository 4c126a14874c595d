"""What people see while devbox works: one line per step, and for a long transfer a bar
(bytes, rate, ETA per host) on a terminal, plain lines otherwise, nothing with --json.

Everything goes to stderr, so stdout stays the result alone. tqdm is imported only when
a transfer starts on a terminal: `devbox --help` must not pay for it.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import Callable, TextIO

from devbox.result import printable

LINE_STEP = 0.10        # plain lines: one per tenth of the transfer
UNKNOWN_STEP = 256e6    # ... or per 256 MB when the total is not known


def human(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} GB"


def clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class LineMeter:
    """Plain progress lines (logs, CI, pipes): sent/total, rate and ETA at each tenth."""

    def __init__(self, say: Callable[[str], None], host: str, total: int | None, now: Callable[[], float] = time.monotonic):
        self.say, self.host, self.total, self.now = say, host, total, now
        self.started = now()
        self.next = LINE_STEP * total if total else UNKNOWN_STEP

    def line(self, sent: int) -> str:
        elapsed = max(self.now() - self.started, 1e-6)
        rate = sent / elapsed
        if not self.total:
            return f"{self.host}: sent {human(sent)}, {human(rate)}/s"
        eta = (self.total - sent) / rate if rate and sent < self.total else 0
        return f"{self.host}: sent {human(sent)} of {human(self.total)} ({min(sent / self.total, 1):.0%}), {human(rate)}/s, ETA {clock(eta)}"

    def update(self, sent: int) -> None:
        if sent >= self.next:
            self.say(self.line(sent))
            while self.next <= sent:
                self.next += LINE_STEP * self.total if self.total else UNKNOWN_STEP

    def close(self, sent: int) -> None:
        elapsed = max(self.now() - self.started, 1e-6)
        self.say(f"{self.host}: sent {human(sent)} in {elapsed:.1f} s ({human(sent / elapsed)}/s)")


class BarMeter:
    """A tqdm bar of its own line per host (several hosts deliver at once)."""

    _lock = threading.Lock()
    _rows: set[int] = set()

    def __init__(self, stream: TextIO, host: str, total: int | None):
        from tqdm import tqdm  # only now: a transfer is starting on a terminal

        with self._lock:
            self.row = min(set(range(len(self._rows) + 1)) - self._rows)
            self._rows.add(self.row)
        width = {"dynamic_ncols": True} if _columns(stream) else {"ncols": 100, "nrows": 50}   # a pty of no size: tqdm hides all bars
        self.bar = tqdm(total=total, desc=host, unit="B", unit_scale=True, unit_divisor=1000, file=stream,
                        position=self.row, leave=True, mininterval=0.25, **width)
        self.sent = 0

    def update(self, sent: int) -> None:
        self.bar.update(sent - self.sent)
        self.sent = sent

    def close(self, sent: int) -> None:
        if self.bar.total is not None and sent > self.bar.total:
            self.bar.total = sent
        self.update(sent)
        self.bar.close()
        with self._lock:
            self._rows.discard(self.row)


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 0


class Reporter:
    """The `progress` callable the CLI hands down: call it with a step's message; ask it for
    a meter when bytes start to flow (steps.StreamImage)."""

    def __init__(self, mode: str, stream: TextIO | None = None):
        self.mode = mode                       # "quiet" (--json), "lines" or "bar"
        self.stream = stream or sys.stderr

    @classmethod
    def for_cli(cls, as_json: bool) -> "Reporter":
        if as_json:
            return cls("quiet")
        return cls("bar" if sys.stderr.isatty() else "lines")

    def __call__(self, message: str) -> None:
        if self.mode == "quiet":
            return
        message = printable(message)   # build output and other host text
        if self.mode == "bar" and "tqdm" in sys.modules:
            sys.modules["tqdm"].tqdm.write(f"  … {message}", file=self.stream)
        else:
            print(f"  … {message}", file=self.stream, flush=True)

    def transfer(self, host: str, total: int | None):
        if self.mode == "quiet":
            return NoMeter()
        if self.mode == "bar":
            return BarMeter(self.stream, host, total)
        return LineMeter(self, host, total)


class NoMeter:
    def update(self, sent: int) -> None:
        pass

    def close(self, sent: int) -> None:
        pass


def meter(progress: Callable[[str], None], host: str, total: int | None):
    """A meter for a transfer: the reporter's own, or plain lines through any callable."""
    transfer = getattr(progress, "transfer", None)
    return transfer(host, total) if transfer else LineMeter(progress, host, total)
