"""`python -m bench.phases TRACE.json -- up HOST …`: devbox's CLI, with the phases of `up` timed.

Wraps (in this process only, nothing in devbox changes) the functions `up` goes through, and
writes each call's start and end, seconds since the process started, to TRACE.json: the
connection, each gather, each step, each `docker load` part of a stream (and when its
first byte left), the pin, verify. bench/streamfloor.py reads it to say where the time of a
streamed `up` goes next to `docker save | ssh docker load`.
"""
from __future__ import annotations

import functools
import json
import sys
import time

STARTED = time.perf_counter()
EVENTS: list[dict] = []


def now() -> float:
    return round(time.perf_counter() - STARTED, 4)


def timed(owner, name: str, label=None) -> None:
    """Replace owner.name by a wrapper that records (label, start, end)."""
    inner = getattr(owner, name)

    @functools.wraps(inner)
    def wrapper(*args, **kwargs):
        start = now()
        try:
            return inner(*args, **kwargs)
        finally:
            EVENTS.append({"what": label(*args, **kwargs) if label else name, "start": start, "end": now()})

    setattr(owner, name, wrapper)


def install() -> None:
    from devbox import delivery, remote, steps
    from devbox.commands import up

    timed(remote.Host, "_open", lambda *a, **k: "connect")
    timed(up, "plan_host", lambda *a, **k: "gather+plan")
    timed(up, "connect", lambda *a, **k: "pin+entry")
    timed(up, "verify_box", lambda *a, **k: "verify")
    timed(remote.Host, "stream", lambda *a, **k: "load part")
    classes = [steps.Step]
    for cls in classes:
        classes += cls.__subclasses__()
        if "apply" in vars(cls):
            timed(cls, "apply", lambda self, *a, **k: f"step {type(self).__name__}")
    first = delivery.save_stream

    def save_stream(*args, **kwargs):
        start = now()
        chunks = first(*args, **kwargs)

        def marked():
            for i, chunk in enumerate(chunks):
                if i == 0:
                    EVENTS.append({"what": "docker save first byte", "start": start, "end": now()})
                yield chunk
            EVENTS.append({"what": "docker save ended", "start": start, "end": now()})
        return marked()

    delivery.save_stream = save_stream


def main() -> None:
    trace, rest = sys.argv[1], sys.argv[3:]
    install()
    sys.argv = ["devbox", *rest]
    from devbox.cli import main as cli

    try:
        cli()
    finally:
        EVENTS.append({"what": "process", "start": 0.0, "end": now()})
        with open(trace, "w") as out:
            json.dump(sorted(EVENTS, key=lambda e: e["start"]), out, indent=1)


if __name__ == "__main__":
    main()
