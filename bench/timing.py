"""Interleaved timing (A B C A B C …) of whole commands, and the summary figures."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Cmd:
    """One contender: `run(i)` is timed (wall, perf_counter); `prep(i)` runs untimed first.
    `run` may return a dict of extra figures for that run (bytes sent, …)."""

    label: str
    run: Callable[[int], dict | None]
    prep: Callable[[int], None] | None = None
    times: list[float] = field(default_factory=list)
    extras: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        t = self.times
        out = {"label": self.label, "runs": len(t), "times_s": [round(x, 4) for x in t],
               "min_s": round(min(t), 4) if t else None, "median_s": round(statistics.median(t), 4) if t else None}
        if self.extras:
            out["extras"] = self.extras
        return out


def interleave(cmds: list[Cmd], runs: int, warmup: int = 1, log=print) -> list[Cmd]:
    for i in range(-warmup, runs):
        for cmd in cmds:
            if cmd.prep:
                cmd.prep(i)
            start = time.perf_counter()
            extra = cmd.run(i)
            elapsed = time.perf_counter() - start
            if i >= 0:
                cmd.times.append(elapsed)
                if extra:
                    cmd.extras.append(extra)
        if i >= 0:
            log(f"    run {i + 1}/{runs}: " + "  ".join(f"{c.label} {c.times[-1]:.3f}s" for c in cmds))
    return cmds


def median(cmd: Cmd) -> float:
    return statistics.median(cmd.times)


def ratio(a: Cmd, b: Cmd) -> dict:
    """A/B: of the medians, and the median of the pairwise (same-round) ratios."""
    pairs = [x / y for x, y in zip(a.times, b.times) if y > 0]
    return {"a": a.label, "b": b.label, "of_medians": round(median(a) / median(b), 3),
            "pairwise_median": round(statistics.median(pairs), 3) if pairs else None,
            "pairwise_min": round(min(pairs), 3) if pairs else None, "pairwise_max": round(max(pairs), 3) if pairs else None}
