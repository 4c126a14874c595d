"""`devbox status`: each host's box as its container labels say (the host is the truth)."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from devbox.basetag import resolve_on
from devbox.config import BoxSpec
from devbox.errors import DevboxError
from devbox.facts import Facts, gather
from devbox.image import content_tag
from devbox.remote import Host
from devbox.result import HostResult, duration


@dataclass
class BoxStatus(HostResult):
    HEADER = (f"{'HOST':<20} {'STATE':<20} {'PORT':>6} {'UPTIME':>8} {'GPUS':<6} {'GPU MEM':>11} {'KEYS':>4} {'JOBS':>4}  "
              "IMAGE / REASON")

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

    def fail(self, exc: DevboxError) -> None:
        super().fail(exc)
        self.state, self.reason = "unreachable", self.error

    def text(self) -> str:
        state = self.state + (f" ({self.health})" if self.health else "")
        count = lambda n: "-" if n is None else n  # noqa: E731
        return (f"{self.host:<20} {state:<20} {self.port or '-':>6} {duration(self.uptime_s):>8} {self.gpus or '-':<6} "
                f"{self.gpu_memory():>11} {count(self.keys):>4} {count(self.jobs):>4}  {self.reason or self.image}")

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
    wanted = spec.gpus if isinstance(spec.gpus, tuple) else None
    mine = [g for g in gpu_facts.gpus if wanted is None or g.index in wanted or g.uuid.lower() in {str(w).lower() for w in wanted}]
    result.gpu_memory_total_mib = sum(g.memory_mib for g in mine)
    result.gpu_memory_used_mib = sum(gpu_facts.gpu_memory_used.get(g.index, 0) for g in mine)


def status_host(spec: BoxSpec, result: BoxStatus) -> None:
    with Host(spec.host) as host:
        spec, choice, asked = resolve_on(host, spec, memory=True)
        result.base_image, result.base_why = choice.tag, choice.why
        facts = gather(host, spec, content_tag(spec.image), asked=asked)
        read_status(result, facts)
        read_gpu_memory(result, spec, facts if asked else None)
