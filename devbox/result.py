"""What commands return, and the one place that prints it.

Commands return data (pipx's lesson): a `HostResult` per host, or rows, each with its
JSON (`as_dict`) and its text (`text`) side by side. `for_each_host` runs one host's
workflow over many hosts in parallel and is the one place a `DevboxError` becomes a
result; `render` is the one place results become text or JSON.
"""
from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterable, TypeVar

from devbox.errors import DevboxError


# Escape sequences (CSI, OSC, DCS…, any other ESC pair) and control characters but tab and
# newline: text a host sends (nvidia-smi, docker, a job) could otherwise retitle, recolour or
# rewrite the user's terminal. JSON needs none of this: json.dumps escapes them all.
CONTROL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]?|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[PX^_][^\x1b]*(?:\x1b\\)?"
                     r"|\x1b.?|[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` without anything a terminal would act on; tabs and newlines stay."""
    return CONTROL.sub("", text)


def _plain(value):
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


@dataclass
class HostResult:
    """One host's outcome: every command's JSON has these four, plus its own fields."""

    HEADER: ClassVar[str] = ""     # a table's header line, for results printed as rows

    host: str
    exit_code: int = 0
    error: str = ""
    changed: bool = False

    @classmethod
    def start(cls, spec) -> "HostResult":
        """An empty result for the box of `spec` (a BoxSpec: its name, which for a host's own
        box is the host), before its work runs."""
        return cls(spec.box.name)

    def fail(self, exc: DevboxError) -> None:
        self.error, self.exit_code = exc.one_line(), exc.exit_code

    def as_dict(self) -> dict:
        return {key: _plain(value) for key, value in self.__dict__.items()}

    def text(self) -> str:
        if self.error:
            return f"{self.host}: FAILED: {self.error.removeprefix(self.host + ': ')}"
        return f"{self.host}: {self.summary()}"

    def summary(self) -> str:
        return "ok"


R = TypeVar("R", bound=HostResult)


def for_each_host(items: list, start: Callable[[object], R], work: Callable[[object, R], None], max_workers: int = 16,
                  on_done: Callable[[R], None] | None = None) -> list[R]:
    """Run work(item, result) for every item, `max_workers` at a time, results in the given order;
    `on_done(result)` is called (in this thread) as each host finishes, in the order they do.

    Like a Fabric ThreadingGroup over a whole workflow: a failing host becomes its own
    result (the one `except DevboxError` of the per-host commands) and never stops the rest;
    a host that does not answer holds one worker for its connect timeout, not the others.
    """
    def one(item) -> R:
        result = start(item)
        began = time.monotonic()
        try:
            work(item, result)
        except DevboxError as exc:
            result.fail(exc)
        if hasattr(result, "seconds"):
            result.seconds = round(time.monotonic() - began, 3)
        return result

    def done(result: R) -> R:
        if on_done:
            on_done(result)
        return result

    if len(items) == 1 or max_workers == 1:
        return [done(one(item)) for item in items]
    from concurrent.futures import ThreadPoolExecutor, as_completed  # here: one host (the common case) needs no pool

    with ThreadPoolExecutor(max_workers=min(max_workers, len(items) or 1)) as pool:
        futures = [pool.submit(one, item) for item in items]
        for future in as_completed(futures):
            done(future.result())
        return [future.result() for future in futures]


class RowPrinter:
    """Prints each host's text as soon as it is done (its table's header first), so a slow
    or hung host holds back its own row only; `for_each_host(on_done=...)` calls it."""

    def __init__(self, write: Callable[[str], None], rows: Callable[[object], list] | None = None):
        self.write, self.rows, self.started, self.lock = write, rows, False, threading.Lock()

    def __call__(self, result) -> None:
        with self.lock:
            if not self.started and getattr(result, "HEADER", ""):
                self.write(result.HEADER)
            self.started = True
            for row in self.rows(result) if self.rows else [result]:
                self.write(printable(row.text()))


def render(items: Iterable, as_json: bool, note: str = "", one: bool = False) -> str:
    """Text (with a header line for rows, and a closing note) or indented JSON."""
    items = list(items)
    if as_json:
        data = [_plain(item) for item in items]
        return json.dumps(data[0] if one else data, indent=2, default=str)
    header = getattr(items[0], "HEADER", "") if items else ""
    lines = ([header] if header else []) + [item.text() for item in items]
    return printable("\n".join(lines + ([note] if note else [])))


def worst_exit(results: Iterable[HostResult]) -> int:
    return max((r.exit_code for r in results), default=0)


def duration(seconds: int | None) -> str:
    """`3d`, `5h`, `12m`, `40s` or `-`: the tables' one way of saying how long."""
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
