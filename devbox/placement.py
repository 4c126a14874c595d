"""Which GPUs a box gets on a host that other boxes share (pure: facts in, a decision out).

The host is the truth: the other devbox boxes that run there and the GPUs their labels
say they hold (`devbox.gpus`, written at creation from the very device list Docker got).
A box asks by index/UUID (refused on an overlap, naming who holds it) or by count (any
free ones, and the same ones again on every re-run while they stay free). `shared = true`
on two boxes lets them share a GPU on purpose; a box without it never shares. `up` makes
this choice under the engine lock (devbox/lock.py), so two `up`s never pick the same GPU.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from devbox.boxid import PREFIX
from devbox.config import BoxSpec
from devbox.errors import DevboxError

NEXT_SUFFIXES = (".next", ".old")      # the same box, mid-swap (plan.SwapBox)


@dataclass(frozen=True)
class GpuHolder:
    """A running devbox box and the GPUs its labels say it holds."""

    container: str
    box: str                 # its name (`devbox.box` label; a host's own box before it existed: from the container)
    owner: str
    devices: str             # "all", "none", "1,3" or GPU UUIDs
    shared: bool = False
    container_id: str = ""

    def who(self) -> str:
        return f"box {self.box}" + (f" ({self.owner})" if self.owner else "")


@dataclass(frozen=True)
class GpuProcess:
    """A compute process on a GPU, and the container it runs in ("" outside any)."""

    pid: int
    gpu_uuid: str
    container_id: str = ""


def parse_holders(text: str) -> tuple[GpuHolder, ...]:
    """`docker ps --no-trunc` rows: ID, name, devbox.box, devbox.owner, devbox.gpus, devbox.shared (tab-separated)."""
    holders = []
    for line in text.splitlines():
        parts = line.split("\t")
        parts += [""] * (6 - len(parts))          # trailing empty labels: the answer's last line is stripped
        if len(parts) != 6 or not parts[1].startswith(PREFIX):
            continue
        cid, name, box, owner, devices, shared = parts
        base = name.removesuffix(".next").removesuffix(".old")
        holders.append(GpuHolder(base, box or base.removeprefix(PREFIX), owner, devices or "none", shared == "true", cid))
    return tuple(holders)


def parse_gpu_processes(text: str) -> tuple[GpuProcess, ...]:
    """Rows of `PID<TAB>GPU-UUID<TAB>container id or empty`."""
    rows = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[0].isdigit():
            rows.append(GpuProcess(int(parts[0]), parts[1].strip(), parts[2].strip()))
    return tuple(rows)


def _indices(devices, gpus) -> set[int]:
    """GPU indices of a device list ("all", "1,3", UUIDs, a tuple) on a host with `gpus`."""
    by_uuid = {g.uuid.lower(): g.index for g in gpus if g.uuid}
    if devices == "all":
        return {g.index for g in gpus}
    if devices in ("none", "", None):
        return set()
    items = devices.split(",") if isinstance(devices, str) else devices
    out = set()
    for item in items:
        item = str(item).strip()
        if item.isdigit():
            out.add(int(item))
        elif item.lower() in by_uuid:
            out.add(by_uuid[item.lower()])
    return out


def _ranges(indices) -> str:
    """[0, 1, 2, 5] -> "0-2, 5" (how a refusal lists the free GPUs)."""
    out, run = [], []
    for i in sorted(indices):
        if run and i != run[-1] + 1:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 2 else ", ".join(map(str, run)))
            run = []
        run.append(i)
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 2 else ", ".join(map(str, run)))
    return ", ".join(out) or "none"


def taken_by(spec: BoxSpec, facts) -> dict[int, GpuHolder]:
    """GPU index -> the other box that holds it, as far as `spec` is concerned (two shared
    boxes do not take GPUs from each other)."""
    taken: dict[int, GpuHolder] = {}
    for holder in facts.gpu_holders:
        if holder.container == spec.box_name or (spec.shared and holder.shared):
            continue
        for index in _indices(holder.devices, facts.gpus):
            taken.setdefault(index, holder)
    return taken


def as_before(spec: BoxSpec, facts) -> BoxSpec:
    """A count keeps the GPUs the box was given (its label), so a re-run that changes nothing
    looks like nothing changed; a box that never ran has none yet."""
    if not isinstance(spec.gpus, int) or isinstance(spec.gpus, bool):
        return spec
    labels = facts.box_labels
    chosen = [int(i) for i in labels.get("devbox.gpus", "").split(",") if i.isdigit()]
    if labels.get("devbox.gpu-count") == str(spec.gpus) and len(chosen) == spec.gpus:
        return replace(spec, gpus=tuple(chosen), gpu_count=spec.gpus)
    return spec


def place_gpus(spec: BoxSpec, facts) -> tuple[BoxSpec, list[str]]:
    """The spec with its GPUs decided, and warnings (GPUs busy outside any box).

    Before the host's GPUs are known (a box that already matches needs no host check)
    the box keeps what it has.
    """
    before = as_before(spec, facts)
    if not spec.wants_gpus or not facts.host_checked or not facts.gpus:
        return before, []
    taken = taken_by(spec, facts)
    every = {g.index for g in facts.gpus}
    if isinstance(spec.gpus, int):
        placed = _choose(before, spec.gpus, every, taken)
    else:
        _refuse_overlap(spec, _indices(spec.gpus, facts.gpus), every, taken)
        placed = spec
    return placed, _outside_warnings(placed, facts)


def _choose(spec: BoxSpec, count: int, every: set[int], taken: dict[int, GpuHolder]) -> BoxSpec:
    free = sorted(every - set(taken))
    if isinstance(spec.gpus, tuple) and set(spec.gpus) <= set(free):
        return spec                                   # its own GPUs are still free: keep them
    if len(free) < count:
        raise DevboxError(f"{spec.box.name}: {count} GPU(s) asked for, {len(free)} free on {spec.host} "
                          f"(free: {_ranges(free)}; {_holders_text(taken)})",
                          "ask for fewer (gpus = N), wait for a box to stop (`devbox status HOST` says who holds which), "
                          "or set shared = true on boxes that may share", exit_code=3)
    return replace(spec, gpus=tuple(free[:count]), gpu_count=count)


def _refuse_overlap(spec: BoxSpec, wanted: set[int], every: set[int], taken: dict[int, GpuHolder]) -> None:
    clash = sorted(wanted & set(taken))
    if clash:
        holders = {taken[i].who(): [j for j in clash if taken[j] is taken[i]] for i in clash}
        named = "; ".join(f"GPU {', '.join(map(str, idx))} held by {who}" for who, idx in holders.items())
        raise DevboxError(f"{spec.box.name}: {named}; free GPUs on {spec.host}: {_ranges(every - set(taken))}",
                          "pick free GPUs in `gpus`, ask for a count (gpus = 2) to get any free ones, "
                          "or set shared = true on both boxes to share on purpose", exit_code=3)


def _holders_text(taken: dict[int, GpuHolder]) -> str:
    by_holder: dict[str, list[int]] = {}
    for index, holder in sorted(taken.items()):
        by_holder.setdefault(holder.who(), []).append(index)
    return "; ".join(f"{who} holds {_ranges(idx)}" for who, idx in by_holder.items()) or "none held"


def _outside_warnings(spec: BoxSpec, facts) -> list[str]:
    """A GPU of this box busy with a process that runs in no devbox box (someone's bare job)."""
    boxes = {h.container_id for h in facts.gpu_holders if h.container_id}
    mine = _indices(spec.gpus, facts.gpus)
    index_of = {g.uuid.lower(): g.index for g in facts.gpus if g.uuid}
    warnings = []
    for process in facts.gpu_processes:
        index = index_of.get(process.gpu_uuid.lower())
        if index in mine and process.container_id not in boxes:
            warnings.append(f"{spec.box.name}: GPU {index} is busy with PID {process.pid}, which runs outside any devbox box "
                            f"(see `ssh {spec.host} ps -fp {process.pid}`)")
    return warnings
