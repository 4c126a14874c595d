"""`devbox top HOST...`: each GPU's utilisation, memory, temperature and power, and which box
and job use it, refreshed until Ctrl-C (`--once --json` for scripts).

One SSH session per host for the whole run; each refresh is one exchange holding one
`nvidia-smi -q -x` (every GPU and its compute processes in one call, ~0.1 s on an H100).
A process is mapped to its box through the host's /proc/PID/cgroup (the container id) and
to its job through its ancestors' command lines (`sh …/.devbox/jobs/NAME/run.sh`): both
world-readable, so the ops user needs no root.
"""
from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Callable

from devbox.config import BoxSpec
from devbox.errors import EXIT_UNREACHABLE, DevboxError, HostUnreachable
from devbox.facts import HOLDERS, MARK, ask_host, parse_sections
from devbox.placement import gpu_indices, parse_holders
from devbox.remote import Host
from devbox.result import HostResult, for_each_host, render

TOP_SCRIPT = f"""sec() {{ echo; echo '{MARK}' "$1"; }}
sec smi; x=$(nvidia-smi -q -x 2>&1); echo "$x"
sec procs
for p in $(echo "$x" | sed -n 's:.*<pid>\\([0-9]*\\)</pid>.*:\\1:p' | sort -u); do
  c=$(grep -o -E '[0-9a-f]{{64}}' /proc/$p/cgroup 2>/dev/null | head -n1); j=""; q=$p; i=0
  while [ -n "$q" ] && [ "$q" -gt 1 ] && [ $i -lt 16 ]; do
    j=$(tr '\\0' ' ' </proc/$q/cmdline 2>/dev/null | sed -n 's:.*/\\.devbox/jobs/\\([^/ ]*\\)/run\\.sh.*:\\1:p')
    [ -n "$j" ] && break
    q=$(sed 's/.*) //' /proc/$q/stat 2>/dev/null | cut -d' ' -f2); i=$((i+1))
  done
  printf '%s\\t%s\\t%s\\n' "$p" "$c" "$j"
done
sec boxes; docker ps --no-trunc --filter label=devbox.managed=true --format '{{{{.ID}}}}\\t{{{{.Names}}}}' 2>/dev/null
sec holders; {HOLDERS}
true
"""


@dataclass
class GpuProcess:
    pid: int
    memory_mib: int | None
    box: str = ""          # container name, when the process runs in a devbox box
    job: str = ""          # devbox job name, when it runs under `devbox run`


@dataclass
class GpuHealth:
    index: int
    uuid: str
    name: str
    utilization_pct: int | None
    memory_used_mib: int | None
    memory_total_mib: int | None
    temperature_c: int | None
    power_w: float | None
    power_limit_w: float | None
    processes: list[GpuProcess] = field(default_factory=list)
    held_by: list[str] = field(default_factory=list)   # the running boxes given this GPU ("alice-3 (alice)")

    def as_dict(self) -> dict:
        return {**self.__dict__, "processes": [p.__dict__ for p in self.processes]}


@dataclass
class TopResult(HostResult):
    HEADER = f"{'HOST':<16} {'GPU':>3} {'NAME':<22} {'UTIL':>5} {'MEMORY':>15} {'TEMP':>5} {'POWER':>11}  USED BY"

    gpus: list[GpuHealth] = field(default_factory=list)
    seconds: float = 0.0
    waiting: bool = False          # live: the host has not answered its first question yet

    @classmethod
    def unanswered(cls, spec) -> "TopResult":
        """A row for a host still asked its first question (live top)."""
        result = cls.start(spec)
        result.waiting, result.exit_code = True, EXIT_UNREACHABLE
        return result

    def text(self) -> str:
        if self.error:
            return f"{self.host:<16} FAILED: {self.error.removeprefix(self.host + ': ')}"
        if self.waiting:
            return f"{self.host:<16} waiting for its first answer"
        return "\n".join(self.row(g) for g in self.gpus) or f"{self.host:<16} no GPUs"

    def row(self, g: GpuHealth) -> str:
        num = lambda v, unit="": "-" if v is None else f"{v:.0f}{unit}"  # noqa: E731
        memory = f"{num(g.memory_used_mib)}/{num(g.memory_total_mib)} MiB"
        power = f"{num(g.power_w)}/{num(g.power_limit_w)} W"
        users = ", ".join([*(f"box {who}" for who in g.held_by),
                           *(p.box.removeprefix("devbox-") + (f":{p.job}" if p.job else "") if p.box else f"pid {p.pid}"
                             for p in g.processes)]) or "-"
        return (f"{self.host:<16} {g.index:>3} {g.name[:22]:<22} {num(g.utilization_pct, '%'):>5} {memory:>15} "
                f"{num(g.temperature_c, 'C'):>5} {power:>11}  {users}")


def _number(text: str | None) -> float | None:
    """"81559 MiB", "36 C", "117.36 W", "0 %" -> the number; "N/A", "[N/A]" or nothing -> None."""
    match = re.match(r"^\s*(-?\d+(?:\.\d+)?)", text or "")
    return float(match.group(1)) if match else None


def _int(text: str | None) -> int | None:
    value = _number(text)
    return None if value is None else int(value)


def _first(node: ET.Element, *paths: str) -> str | None:
    """The first of `paths` with a number (drivers moved power_draw between releases)."""
    return next((node.findtext(p) for p in paths if _number(node.findtext(p)) is not None), None)


def parse_smi_xml(text: str) -> list[GpuHealth]:
    """`nvidia-smi -q -x` -> one GpuHealth per GPU, in nvidia-smi's index order."""
    try:
        root = ET.fromstring(text[text.index("<nvidia_smi_log"):] if "<nvidia_smi_log" in text else text)
    except ET.ParseError as exc:
        raise DevboxError(f"nvidia-smi -q -x gave no readable answer: {text.strip().splitlines()[-1][:200] if text.strip() else exc}",
                          "check the NVIDIA driver on the host (nvidia-smi must work for the SSH user)", exit_code=3) from None
    gpus = []
    for index, gpu in enumerate(root.findall("gpu")):
        processes = [GpuProcess(int(p.findtext("pid")), _int(p.findtext("used_memory")))
                     for p in gpu.findall("processes/process_info") if (p.findtext("pid") or "").isdigit()]
        gpus.append(GpuHealth(
            index, gpu.findtext("uuid", ""), gpu.findtext("product_name", ""),
            _int(gpu.findtext("utilization/gpu_util")), _int(gpu.findtext("fb_memory_usage/used")),
            _int(gpu.findtext("fb_memory_usage/total")), _int(gpu.findtext("temperature/gpu_temp")),
            _number(_first(gpu, "gpu_power_readings/instant_power_draw", "gpu_power_readings/power_draw",
                           "gpu_power_readings/average_power_draw", "power_readings/power_draw")),
            _number(_first(gpu, "gpu_power_readings/current_power_limit", "power_readings/power_limit")),
            processes))
    return gpus


def parse_top(text: str) -> list[GpuHealth]:
    """One refresh's answer: the GPUs, with each process named by its box and job."""
    sections = parse_sections(text)
    smi = (sections.get("smi") or [""])[-1]
    if "<nvidia_smi_log" not in smi:
        raise HostUnreachable(f"nvidia-smi failed: {smi.splitlines()[-1][:200] if smi else 'no answer'}",
                              "install the NVIDIA driver on the host, or check that the SSH user may run nvidia-smi")
    gpus = parse_smi_xml(smi)
    boxes = dict(line.split("\t", 1) for line in (sections.get("boxes") or [""])[-1].splitlines() if "\t" in line)
    owners = {}
    for line in (sections.get("procs") or [""])[-1].splitlines():
        pid, container, job = (line.split("\t") + ["", ""])[:3]
        if pid.isdigit():
            owners[int(pid)] = (boxes.get(container, ""), job)
    for process in (p for g in gpus for p in g.processes):
        process.box, process.job = owners.get(process.pid, ("", ""))
    for holder in parse_holders((sections.get("holders") or [""])[-1]):
        for gpu in gpus:
            if gpu.index in gpu_indices(holder.devices, gpus):
                gpu.held_by.append(holder.box + (f" ({holder.owner})" if holder.owner else ""))
    return gpus


def sample(host: Host, result: TopResult) -> None:
    began = time.monotonic()
    result.gpus = parse_top(ask_host(host, TOP_SCRIPT))
    result.seconds = round(time.monotonic() - began, 3)


def top_once(specs: list[BoxSpec], on_done: Callable[[TopResult], None] | None = None) -> list[TopResult]:
    def one(spec: BoxSpec, result: TopResult) -> None:
        with Host(spec.host) as host:
            sample(host, result)
    return for_each_host(specs, TopResult.start, one, on_done=on_done)


def top_live(specs: list[BoxSpec], interval: float, write: Callable[[str], None], as_json: bool = False,
             rounds: int | None = None) -> list[TopResult]:
    """Refresh every `interval` seconds over one open connection per host until Ctrl-C.

    Each host is asked in a thread of its own, one sample at a time, and a frame shows every
    host's latest answer: a host that hangs (until its question timeout) holds back its own
    row, never the others' refreshes."""
    from concurrent.futures import ThreadPoolExecutor, wait

    hosts: dict[str, Host] = {}

    def one(spec: BoxSpec, result: TopResult) -> None:
        if spec.host not in hosts:
            hosts[spec.host] = Host(spec.host).__enter__()
        sample(hosts[spec.host], result)

    latest: dict[int, TopResult] = {}
    asking: dict[int, object] = {}
    pool = ThreadPoolExecutor(max_workers=min(16, len(specs)) or 1)
    results: list[TopResult] = []
    try:
        done = 0
        while rounds is None or done < rounds:
            began = time.monotonic()
            for i, spec in enumerate(specs):
                if i not in asking:
                    asking[i] = pool.submit(for_each_host, [spec], TopResult.start, one)
            wait(list(asking.values()), timeout=interval)
            for i in [i for i, future in asking.items() if future.done()]:
                latest[i] = asking.pop(i).result()[0]
            results = [latest.get(i) or TopResult.unanswered(spec) for i, spec in enumerate(specs)]
            write(render(results, as_json) if as_json else "\033[H\033[2J" + render(results, False, f"every {interval:g} s; Ctrl-C to leave"))
            done += 1
            if rounds is None or done < rounds:
                time.sleep(max(0.0, interval - (time.monotonic() - began)))
    except KeyboardInterrupt:
        pass
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        for host in hosts.values():   # ends a question still in flight: its thread returns at once
            host.__exit__(None, None, None)
    return results
