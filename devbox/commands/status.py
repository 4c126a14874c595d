"""`devbox status`: each box as its container labels say (the host is the truth).

For a host, its own box and every other devbox box on it (a box per person): their
rows come from the host's labels alone, so a teammate's box shows even though this
laptop's devbox.toml does not describe it. With `idle_stop`, each row says why a running
box is kept up (the watcher's last sample) or when and why it stopped itself.
"""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from devbox.basetag import resolve_on
from devbox.config import BoxSpec
from devbox.errors import DevboxError
from devbox.facts import SECTION, Facts, gather, parse_sections
from devbox.image import content_tag
from devbox.remote import Host
from devbox.result import HostResult, duration


@dataclass
class BoxStatus(HostResult):
    HEADER = (f"{'BOX':<20} {'OWNER':<10} {'STATE':<20} {'PORT':>6} {'UPTIME':>8} {'GPUS':<6} {'GPU MEM':>11} {'KEYS':>4} "
              f"{'JOBS':>4}  IMAGE / REASON")

    box_host: str = ""             # the host it runs on (a host's own box: the host itself)
    owner: str = ""
    state: str = "unreachable"     # running, exited, absent, unreachable
    image: str = ""
    uptime_s: int | None = None
    port: int | None = None
    gpus: str = ""
    keys: int | None = None
    jobs: int | None = None
    health: str = ""               # the image's health check: healthy, starting, unhealthy
    reason: str = ""
    gpu_memory_used_mib: int | None = None    # over the box's GPUs (all the host's for "all")
    gpu_memory_total_mib: int | None = None
    base_image: str = ""           # what `up` would build on now, and why (base_image = "auto")
    base_why: str = ""
    env: dict[str, str] = field(default_factory=dict)    # the box's plain variables (not secret)
    secrets: list[str] = field(default_factory=list)     # the names of its secrets, never values
    kept_up_by: list[str] = field(default_factory=list)   # idle_stop: why the running box stays up
    stopped_why: str = ""          # idle_stop: when and why it stopped itself
    others: list["BoxStatus"] = field(default_factory=list)   # the host's other boxes (printed as rows of their own)
    slurm: dict = field(default_factory=dict)   # a Slurm box's job: id, state, reason, position, node, gpus, time_left, ended

    def as_dict(self) -> dict:
        data = super().as_dict()
        data.pop("others")
        return data

    def fail(self, exc: DevboxError) -> None:
        super().fail(exc)
        self.state, self.reason = "unreachable", self.error

    def text(self) -> str:
        state = self.state + (f" ({self.health})" if self.health else "")
        count = lambda n: "-" if n is None else n  # noqa: E731
        why = self.reason or "; ".join(filter(None, [self.stopped_why, ", ".join(self.kept_up_by) and
                                                      "kept up: " + ", ".join(self.kept_up_by), self.image]))
        why = "; ".join(filter(None, [slurm_line(self.slurm), why]))
        return (f"{self.host:<20} {self.owner or '-':<10} {state:<20} {self.port or '-':>6} {duration(self.uptime_s):>8} "
                f"{self.gpus or '-':<6} {self.gpu_memory():>11} {count(self.keys):>4} {count(self.jobs):>4}  {why}")

    def gpu_memory(self) -> str:
        if self.gpu_memory_total_mib is None:
            return "-"
        return f"{self.gpu_memory_used_mib / 1024:.1f}/{self.gpu_memory_total_mib / 1024:.0f}G"


def uptime_seconds(box: dict, now: datetime | None = None) -> int | None:
    started = box.get("State", {}).get("StartedAt", "")
    if not box.get("State", {}).get("Running") or not started:
        return None
    stamp = datetime.fromisoformat(started[:26].rstrip("Z") + "+00:00") if "." in started else datetime.fromisoformat(started.replace("Z", "+00:00"))
    return int(((now or datetime.now(timezone.utc)) - stamp).total_seconds())


def read_status(result: BoxStatus, facts: Facts) -> None:
    """Fill the row from what the host said (pure)."""
    if facts.docker_version is None:
        result.fail(DevboxError(f"docker: {facts.docker_error}", exit_code=3))
        result.reason = result.error
        return
    if facts.box is None:
        result.state, result.reason = "absent", "no box: run `devbox up`"
        return
    labels, state = facts.box_labels, facts.box.get("State") or {}
    result.state, result.image = state.get("Status", "unknown"), labels.get("devbox.image", "")
    result.uptime_s = uptime_seconds(facts.box)
    result.port = int(labels["devbox.port"]) if labels.get("devbox.port", "").isdigit() else None
    result.gpus, result.health = labels.get("devbox.gpus", ""), (state.get("Health") or {}).get("Status", "")
    if facts.authorized_keys is not None:
        result.keys = sum(1 for line in facts.authorized_keys.splitlines() if line and not line.startswith("#"))
    result.jobs = facts.job_count if facts.box_running else None
    if facts.box_env is not None:
        result.env, result.secrets = dict(facts.box_env.env), list(facts.box_env.secrets)


def read_gpu_memory(result: BoxStatus, spec: BoxSpec, gpu_facts: Facts | None) -> None:
    """Used and total memory of the GPUs the box is given (pure)."""
    if not gpu_facts or not gpu_facts.gpus or not spec.wants_gpus:
        return
    given = result.gpus.split(",") if result.gpus not in ("", "all", "none") else []
    wanted = spec.gpus if isinstance(spec.gpus, tuple) else tuple(int(i) if i.isdigit() else i for i in given) or None
    mine = [g for g in gpu_facts.gpus if wanted is None or g.index in wanted or g.uuid.lower() in {str(w).lower() for w in wanted}]
    result.gpu_memory_total_mib = sum(g.memory_mib for g in mine)
    result.gpu_memory_used_mib = sum(gpu_facts.gpu_memory_used.get(g.index, 0) for g in mine)


# Every devbox box of the host (`docker inspect`; the team's devbox.toml names hosts alike, and
# the `devbox.host` label keeps that name), and what its idle watcher says: the last sample for
# a running box, the stop line in its log for a stopped one (one exchange).
BOXES_SCRIPT = "\n".join([
    SECTION,
    "names=$(docker ps -a --filter label=devbox.managed=true --filter label=devbox.spec-hash --filter label=devbox.host={host} "
    "--format '{{.Names}}' 2>/dev/null | grep -v -E '[.](next|old)$')",
    'sec inspect; [ -z "$names" ] || docker container inspect $names 2>/dev/null',
    'for n in $names; do',
    '  set -- $(docker container inspect --format \'{{.State.Running}} {{index .Config.Labels "devbox.user"}} '
    '{{index .Config.Labels "devbox.idle-stop"}}\' "$n" 2>/dev/null)',
    '  [ -n "${3:-}" ] || continue',
    '  sec "idle $n"',
    '  case "$1" in true) docker exec "$n" cat "/home/$2/.devbox/idle/state" 2>/dev/null;;',
    "  *) docker logs --tail 20 \"$n\" 2>&1;; esac",
    "done", "true"]) + "\n"


def slurm_line(job: dict) -> str:
    """A Slurm box's job in one phrase (pure)."""
    if not job:
        return ""
    if job.get("state") == "none":
        return "no Slurm job" + (f"; the last one ended: {job['ended']}" if job.get("ended") else "")
    where = f" on {job['node']}" if job.get("node") else ""
    gpus = f", GPUs {','.join(map(str, job['gpus']))}" if job.get("gpus") else ""
    left = f", {job['time_left']} left" if job.get("time_left") and job.get("state") == "RUNNING" else ""
    why = f" ({job['reason']}" + (f", position {job['position']}" if job.get("position") else "") + ")" if job.get("reason") else ""
    return f"job {job['id']} {job['state'].lower()}{why}{where}{gpus}{left}"


def status_host(spec: BoxSpec, result: BoxStatus) -> None:
    result.box_host, result.owner = spec.host, spec.owner
    if spec.slurm is not None:
        from devbox.scheduler import job_status

        result.slurm, placed = job_status(spec)
        if placed is None:
            result.state = "queued" if result.slurm.get("state") == "PENDING" else "absent"
            result.reason = "" if result.state == "queued" else "run `devbox up`"
            return
        spec = placed
        result.box_host = spec.host
    with Host(spec.host) as host:
        spec, choice, asked = resolve_on(host, spec, memory=True)
        result.base_image, result.base_why = choice.tag, choice.why
        facts = gather(host, spec, content_tag(spec.image), asked=asked)
        read_status(result, facts)
        read_gpu_memory(result, spec, facts if asked else None)
        listed = host.run(BOXES_SCRIPT.replace("{host}", shlex.quote(spec.host)), check=False).stdout
    read_boxes(result, spec, parse_sections(listed))


def read_boxes(result: BoxStatus, spec: BoxSpec, sections: dict[str, list[str]]) -> None:
    """The idle reasons of the box itself and, for a host, one row per other box (pure)."""
    try:
        boxes = json.loads((sections.get("inspect") or ["[]"])[-1] or "[]")
    except json.JSONDecodeError:
        boxes = []
    idle = {name.removeprefix("idle ").strip(): (answers or [""])[-1] for name, answers in sections.items() if name.startswith("idle ")}
    for box in boxes:
        name = box.get("Name", "").lstrip("/")
        if name == spec.box_name:
            read_idle(result, box, idle.get(name, ""))
        elif spec.box.is_default:
            result.others.append(other_row(box, spec.host, idle.get(name, "")))


def rows_of(specs: list[BoxSpec]) -> Callable[[BoxStatus], list[BoxStatus]]:
    """A result's rows: itself, then the other boxes found on its host, each box once (a box
    asked for by name is not listed again under its host). One result at a time, so each
    host's rows print as soon as that host answers."""
    asked = {(spec.host, spec.box.name) for spec in specs}
    return lambda result: [result, *(o for o in result.others if (o.box_host, o.host) not in asked)]



def other_row(box: dict, host: str, idle_text: str) -> BoxStatus:
    """A row for a box this laptop's config may not describe: what its labels say."""
    labels = (box.get("Config") or {}).get("Labels") or {}
    name = labels.get("devbox.box") or box.get("Name", "").lstrip("/").removeprefix("devbox-")
    row = BoxStatus(name, box_host=host, owner=labels.get("devbox.owner", ""))
    facts = Facts(docker_version="known", box=box)
    read_status(row, facts)
    read_idle(row, box, idle_text)
    return row


def read_idle(result: BoxStatus, box: dict, text: str) -> None:
    """Why a box with idle_stop is kept up, or when and why it stopped (pure)."""
    if not text:
        return
    from devbox.idle import IdleState, stopped_reason

    if (box.get("State") or {}).get("Running"):
        try:
            result.kept_up_by = IdleState.parse(text).reasons() or ["nothing: idle, it stops at the end of its window"]
        except ValueError:
            result.kept_up_by = []        # not sampled yet (a box that just started)
    else:
        result.stopped_why = stopped_reason(text) or ""
