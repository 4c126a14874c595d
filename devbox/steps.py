"""Appliers for the Steps that plan.py decides: each one change on the host.

A Step carries data only; this module owns the side effects, so planning stays pure
and `--dry-run` never reaches here.
"""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Callable

from devbox.box import write_authorized_keys
from devbox.image import context_tar
from devbox.plan import Plan, Step
from devbox.errors import DevboxError
from devbox.remote import Host, _reason

Progress = Callable[[str], None]


def build_image(host: Host, plan: Plan, step: Step, progress: Progress) -> dict:
    """Send the few-KB build context and build on the host: no base layer ever crosses."""
    context = context_tar()
    args = ["build", "--tag", plan.image_tag, "--label", "devbox.image=ssh", "--label", f"devbox.base={plan.spec.base_image}"]
    for key, value in plan.spec.image.build_args().items():
        args += ["--build-arg", f"{key}={value}"]

    def relay(chunk: bytes) -> None:
        for line in chunk.decode(errors="replace").splitlines():
            if line.startswith("Step ") or line.startswith("#"):
                progress(f"{plan.spec.host}: {line.strip()}")

    host.docker(*args, "-", stdin=context, on_stdout=relay, timeout=3600)
    return {"delivery": "build-on-host", "bytes_sent": len(context)}


HOST_LAYERS = "docker image ls -q | sort -u | xargs -r docker image inspect --format '{{json .RootFS.Layers}}'"


def stream_image(host: Host, plan: Plan, step: Step, progress: Progress) -> dict:
    """Send only the layers the host lacks (docker save minus its layers | docker load)."""
    import json
    import tempfile

    from devbox.image import save_missing_layers

    have: set[str] = set()
    for line in host.run(HOST_LAYERS, check=False).stdout.splitlines():
        have.update(json.loads(line) or [])
    with tempfile.TemporaryDirectory(prefix="devbox-stream-") as tmp:
        tar, size, skipped = save_missing_layers(plan.image_tag, have, Path(tmp))
        progress(f"{plan.spec.host}: sending {size / 1e6:.1f} MB ({skipped} layer(s) already on the host)")
        with tar.open("rb") as handle:
            host.docker("load", "--quiet", stdin=handle, timeout=3600,
                        on_stdin=_meter(progress, plan.spec.host, size))
    return {"delivery": "stream-missing-layers", "bytes_sent": size}


def _meter(progress: Progress, host: str, total: int):
    """A callback printing progress at each 10% of a transfer."""
    marks = {"next": 0.1}

    def sent(count: int) -> None:
        if total and count / total >= marks["next"]:
            progress(f"{host}: sent {count / 1e6:.0f}/{total / 1e6:.0f} MB")
            marks["next"] += 0.1
    return sent


def create_volume(host: Host, plan: Plan, step: Step, progress: Progress) -> dict:
    uid, gid = step.detail["owner"]
    host.docker("volume", "create", "--label", "devbox.managed=true", "--label", f"devbox.host={plan.spec.host}",
                "--label", f"devbox.uid={uid}", "--label", f"devbox.gid={gid}", step.detail["name"])
    return {}


def create_network(host: Host, plan: Plan, step: Step, progress: Progress) -> dict:
    net = shlex.quote(plan.spec.network)
    host.run(f"docker network inspect {net} >/dev/null 2>&1 || docker network create --driver bridge "
             f"--label devbox.managed=true --label devbox.host={shlex.quote(plan.spec.host)} {net} >/dev/null")
    return {}


PORT_TAKEN = ("address already in use", "port is already allocated")
# Until the new box's sshd answers: fail fast if it stops or restarts (a broken spec).
WAIT_HEALTHY = (
    'for i in $(seq {tries}); do '
    's=$(docker container inspect -f "{{{{.State.Running}}}} {{{{.RestartCount}}}}" {name}); '
    '[ "$s" = "true 0" ] || exit 1; '
    'docker exec {name} /usr/local/bin/devbox-health --banner && exit 0; sleep 0.3; done; exit 1'
)


def create_box(host: Host, plan: Plan, step: Step, progress: Progress, wait_s: float = 30) -> dict:
    """Make the new box beside the old one and swap only once it is proven.

    `docker create` under a temporary name checks the whole spec (mounts, devices)
    while the old box runs on; the old one is then stopped (it holds the port), the new
    one started, and kept only when its sshd answers. Any failure removes the new one and
    starts the old one again. A port another program took since the gather is retried
    with the next free one (not a configured `port`).
    """
    spec = plan.spec
    new, old = f"{spec.box_name}.next", f"{spec.box_name}.old"
    host.docker("rm", "--force", new, old, check=False)   # ours: left by an interrupted `up`
    replace = step.detail["replace"]
    ports = step.detail["ports"]
    for attempt, port in enumerate(ports):
        created = host.docker(*step.detail["argv_for"](port, new), check=False)
        if not created.ok:
            host.docker("rm", "--force", new, check=False)
            raise DevboxError(f"{spec.host}: Docker refused the box spec: {_reason(created)}",
                              "fix devbox.toml and re-run; the running box was not touched", exit_code=2)
        if replace and attempt == 0:
            host.docker("rename", spec.box_name, old)
            host.docker("stop", "--time", "10", old)
        started = host.docker("start", new, check=False)
        proven = started.ok and host.run(WAIT_HEALTHY.format(tries=int(wait_s / 0.4), name=shlex.quote(new)), check=False).ok
        if proven:
            break
        logs = host.docker("logs", "--tail", "3", new, check=False)
        host.docker("rm", "--force", new, check=False)
        taken = not started.ok and any(t in started.stderr for t in PORT_TAKEN)
        if taken and attempt + 1 < len(ports):
            progress(f"{spec.host}: port {port} was taken meanwhile, trying {ports[attempt + 1]}")
            continue
        if replace:
            host.docker("rename", old, spec.box_name)
            host.docker("start", spec.box_name)
        why = _reason(started) if not started.ok else f"its sshd did not answer: {_reason(logs) or 'no log'}"
        raise DevboxError(f"{spec.host}: the new box did not start ({why})",
                          ("the old box is running again; " if replace else "") + "fix devbox.toml or the host, then re-run `devbox up`")
    host.docker("rename", new, spec.box_name)
    if replace:
        host.docker("rm", "--force", old)
    return {"port": port}


def start_box(host: Host, plan: Plan, step: Step, progress: Progress) -> dict:
    host.docker("start", plan.spec.box_name)
    return {}


def sync_keys(host: Host, plan: Plan, step: Step, progress: Progress) -> dict:
    write_authorized_keys(host, plan.spec, plan.image_tag, step.detail["content"])
    return {}


APPLIERS: dict[str, Callable[[Host, Plan, Step, Progress], dict]] = {
    "build_image": build_image,
    "stream_image": stream_image,
    "create_volume": create_volume,
    "create_network": create_network,
    "create_box": create_box,
    "start_box": start_box,
    "sync_keys": sync_keys,
}


def apply(host: Host, plan: Plan, progress: Progress) -> dict:
    """Apply the plan's steps in order; returns what they report (delivery, bytes)."""
    report: dict = {}
    for step in plan.steps:
        progress(f"{plan.spec.host}: {step.description}")
        report.update(APPLIERS[step.action](host, plan, step, progress))
    return report
