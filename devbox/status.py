"""`devbox status`: each host's box as its container labels say (the host is the truth)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from devbox.config import BoxSpec
from devbox.errors import DevboxError
from devbox.facts import Facts
from devbox.image import content_tag
from devbox.remote import Host


@dataclass
class BoxStatus:
    host: str
    state: str            # running, exited, absent, unreachable
    image: str = ""
    uptime_s: int | None = None
    port: int | None = None
    gpus: str = ""
    keys: int | None = None
    jobs: int | None = None
    health: str = ""      # the image's health check: healthy, starting, unhealthy
    reason: str = ""
    exit_code: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def uptime_seconds(box: dict, now: datetime | None = None) -> int | None:
    started = box.get("State", {}).get("StartedAt", "")
    if not box.get("State", {}).get("Running") or not started:
        return None
    stamp = datetime.fromisoformat(started[:26].rstrip("Z") + "+00:00") if "." in started else datetime.fromisoformat(started.replace("Z", "+00:00"))
    return int(((now or datetime.now(timezone.utc)) - stamp).total_seconds())


def status_from_facts(spec: BoxSpec, facts: Facts) -> BoxStatus:
    if facts.box is None:
        return BoxStatus(spec.host, "absent", reason="no box: run `devbox up`")
    labels = facts.box_labels
    keys = None
    if facts.authorized_keys is not None:
        keys = sum(1 for line in facts.authorized_keys.splitlines() if line and not line.startswith("#"))
    return BoxStatus(
        spec.host, facts.box.get("State", {}).get("Status", "unknown"), labels.get("devbox.image", ""),
        uptime_seconds(facts.box), int(labels["devbox.port"]) if labels.get("devbox.port", "").isdigit() else None,
        labels.get("devbox.gpus", ""), keys, facts.job_count if facts.box_running else None,
        ((facts.box.get("State") or {}).get("Health") or {}).get("Status", ""),
    )


def status_host(spec: BoxSpec) -> BoxStatus:
    from devbox.up import gather

    try:
        with Host(spec.host) as host:
            facts = gather(host, spec, content_tag(spec.image), host_check=False)
        if facts.docker_version is None:
            return BoxStatus(spec.host, "unreachable", reason=f"docker: {facts.docker_error}", exit_code=3)
        return status_from_facts(spec, facts)
    except DevboxError as exc:
        return BoxStatus(spec.host, "unreachable", reason=exc.one_line(), exit_code=exc.exit_code)
