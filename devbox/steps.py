"""Appliers for the Steps that plan.py decides: each one change on the host.

A Step carries data only; this module owns the side effects, so planning stays pure
and `--dry-run` never reaches here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from devbox.box import write_authorized_keys
from devbox.image import context_tar
from devbox.plan import Plan, Step
from devbox.remote import Host

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


def remove_box(host: Host, plan: Plan, step: Step, progress: Progress) -> dict:
    host.docker("rm", "--force", plan.spec.box_name)
    return {}


def create_box(host: Host, plan: Plan, step: Step, progress: Progress) -> dict:
    host.docker(*step.detail["argv"])
    return {}


def start_box(host: Host, plan: Plan, step: Step, progress: Progress) -> dict:
    host.docker("start", plan.spec.box_name)
    return {}


def sync_keys(host: Host, plan: Plan, step: Step, progress: Progress) -> dict:
    write_authorized_keys(host, plan.spec, step.detail["content"])
    return {}


APPLIERS: dict[str, Callable[[Host, Plan, Step, Progress], dict]] = {
    "build_image": build_image,
    "stream_image": stream_image,
    "create_volume": create_volume,
    "remove_box": remove_box,
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
