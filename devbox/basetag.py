"""`base_image = "auto"`: the official PyTorch image that matches the host's driver and GPUs.

The rows live in one data file (devbox/data/pytorch_images.toml, sources noted there). Two
rules decide whether an image can work on a host, for `auto` and for an explicit tag alike:

- CUDA: the image's CUDA (major.minor) is at most the one the driver reports (`nvidia-smi`'s
  "CUDA Version"). Minor-version compatibility (a 12.8 build on a 12.2 driver) is not relied
  on: it excludes PTX JIT, which is how a torch build reaches GPUs newer than its kernels.
- Kernels: every GPU's compute capability M.m has a kernel in the build: SASS for M.k with
  k <= m (binary compatible within a major), or PTX for an arch <= M.m (JIT-compiled).

`auto` picks the newest torch, then the newest CUDA, among the rows that pass both.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

from devbox.config import AUTO_BASE as AUTO
from devbox.config import BoxSpec
from devbox.errors import HostUnreachable
from devbox.facts import Facts, ask_host, gpu_script, parse_facts, version_tuple

TABLE = Path(__file__).resolve().parent / "data" / "pytorch_images.toml"
TAG_RE = re.compile(r"^(?:docker\.io/)?pytorch/pytorch:(\d+(?:\.\d+)+)-cuda(\d+\.\d+)-cudnn\d+-(?:runtime|devel)\Z")


@dataclass(frozen=True)
class Arch:
    """One entry of TORCH_CUDA_ARCH_LIST: "9.0" (SASS) or "12.0+PTX" (SASS and PTX)."""

    major: int
    minor: int
    ptx: bool

    @classmethod
    def parse(cls, text: str) -> "Arch":
        number, _, suffix = text.partition("+")
        major, minor = (int(p) for p in number.split("."))
        return cls(major, minor, suffix.upper() == "PTX")

    def runs(self, capability: tuple[int, int]) -> bool:
        major, minor = capability
        return (self.major == major and self.minor <= minor) or (self.ptx and (self.major, self.minor) <= capability)


@dataclass(frozen=True)
class TorchImage:
    tag: str
    torch: tuple[int, ...]
    cuda: tuple[int, ...]
    archs: tuple[Arch, ...]
    source: str = ""

    @property
    def cuda_text(self) -> str:
        return ".".join(map(str, self.cuda))

    def has_kernels_for(self, capability: tuple[int, int]) -> bool:
        return any(arch.runs(capability) for arch in self.archs)


@dataclass(frozen=True)
class BaseChoice:
    """The base image a box is built on, and why (shown by `up --dry-run` and `status --json`)."""

    tag: str
    why: str
    auto: bool

    def as_dict(self) -> dict:
        return {"base_image": self.tag, "base_why": self.why, "base_auto": self.auto}


@lru_cache(maxsize=None)
def load_table(path: Path = TABLE) -> tuple[TorchImage, ...]:
    """The rows, newest first (torch version, then CUDA version)."""
    rows = []
    for row in tomllib.loads(path.read_text())["image"]:
        match = TAG_RE.match(row["tag"])
        if not match:
            raise ValueError(f"{path}: {row['tag']!r} is not a pytorch/pytorch:<torch>-cuda<x.y>-cudnn<z>-runtime tag")
        rows.append(TorchImage(row["tag"], version_tuple(match.group(1)), version_tuple(match.group(2)),
                               tuple(Arch.parse(a) for a in row["archs"]), row.get("source", "")))
    return tuple(sorted(rows, key=lambda r: (r.torch, r.cuda), reverse=True))


def capability(text: str) -> tuple[int, int] | None:
    """"9.0" -> (9, 0); anything else (an old driver's "[N/A]", "") -> None."""
    match = re.match(r"^(\d+)\.(\d+)$", text.strip())
    return (int(match.group(1)), int(match.group(2))) if match else None


def capabilities(facts: Facts) -> list[tuple[int, int]]:
    return sorted({cc for g in facts.gpus if (cc := capability(g.compute_cap))})


def problems(image: TorchImage, facts: Facts) -> list[str]:
    """Why `image` cannot work on the host of `facts` (empty: it can)."""
    found = []
    if facts.driver_cuda and image.cuda > version_tuple(facts.driver_cuda):
        found.append(f"it needs CUDA {image.cuda_text}, the driver {driver_of(facts)} runs CUDA {facts.driver_cuda} at most")
    for cc in capabilities(facts) if image.archs else []:   # an untabled tag: its kernels are unknown
        if not image.has_kernels_for(cc):
            names = ", ".join(sorted({g.name for g in facts.gpus if capability(g.compute_cap) == cc}))
            found.append(f"its torch has no kernels for sm_{cc[0]}{cc[1]} ({names})")
    return found


def driver_of(facts: Facts) -> str:
    return facts.gpus[0].driver if facts.gpus else "?"


def host_summary(facts: Facts) -> str:
    ccs = ", ".join(f"sm_{a}{b}" for a, b in capabilities(facts)) or "compute capability unknown"
    return f"driver {driver_of(facts)} (CUDA {facts.driver_cuda or '?'}), {len(facts.gpus)} GPU(s): {ccs}"


def best(facts: Facts, table: tuple[TorchImage, ...] | None = None) -> TorchImage | None:
    """The newest row that works on this host, or None."""
    return next((row for row in (table or load_table()) if not problems(row, facts)), None)


def known_image(tag: str) -> TorchImage | None:
    """The table's row for an explicit tag; an untabled pytorch tag still tells its CUDA."""
    bare = tag.removeprefix("docker.io/")
    row = next((r for r in load_table() if r.tag == bare), None)
    if row:
        return row
    match = TAG_RE.match(tag)
    return TorchImage(tag, version_tuple(match.group(1)), version_tuple(match.group(2)), ()) if match else None


def choose(spec: BoxSpec, facts: Facts | None, current: str = "") -> BaseChoice:
    """The base for `spec` on the host of `facts` (None: no GPUs were asked for, none probed).

    `current`: the base the running box was built on; `auto` keeps it while it still
    works, so a devbox upgrade with a newer table row does not pull gigabytes on its own.
    """
    if spec.base_image != AUTO:
        return BaseChoice(spec.base_image, "set in the config", False)
    newest = load_table()[0]
    if not spec.wants_gpus or facts is None:
        return BaseChoice(newest.tag, 'gpus = "none": the newest image (its CUDA libraries stay unused; torch runs on the CPU)', True)
    if not facts.gpus:
        return BaseChoice(newest.tag, "no GPU answered nvidia-smi (preflight refuses GPUs here)", True)
    row = best(facts)
    if row is None:
        raise HostUnreachable(
            f"{spec.box.name}: no official PyTorch image runs on {host_summary(facts)}",
            "upgrade the NVIDIA driver (CUDA 12.8 or newer covers every GPU in the table), or set base_image to an image built for these GPUs")
    kept = known_image(current) if current else None
    if kept and kept.archs and not problems(kept, facts) and kept.tag != row.tag:
        return BaseChoice(kept.tag, f"kept the box's base: it still runs on {host_summary(facts)} (newest that would: {row.tag})", True)
    why = f"newest torch whose CUDA ({row.cuda_text}) the driver runs and with kernels for every GPU; host: {host_summary(facts)}"
    return BaseChoice(row.tag, why, True)


def refuse_unworkable(spec: BoxSpec, facts: Facts) -> None:
    """Preflight for an explicit base: exit 3 when it cannot work here, naming the tag that would."""
    if spec.base_image == AUTO or not facts.gpus:
        return
    image = known_image(spec.base_image)
    if image is None:
        return  # not a pytorch/pytorch tag: nothing known to check it against
    found = problems(image, facts)
    if found:
        row = best(facts)
        would = f"use {row.tag} (or base_image = \"auto\")" if row else "upgrade the NVIDIA driver on the host"
        raise HostUnreachable(f"{spec.box.name}: base_image {spec.base_image} cannot work here: {'; '.join(found)}", would)


def resolved(spec: BoxSpec, choice: BaseChoice) -> BoxSpec:
    return spec if spec.base_image == choice.tag else replace(spec, base_image=choice.tag)


def resolve_on(host, spec: BoxSpec, memory: bool = False) -> tuple[BoxSpec, BaseChoice, str]:
    """The spec with its base decided, and the answers asked for it: for `auto` with GPUs
    (or `memory`, for status), one exchange over `host` (a remote.Host) asks the GPUs, the
    driver's CUDA and the box's current base. The answers go on to `facts.gather`, which
    then does not ask them again."""
    asked = ask_host(host, gpu_script(spec, memory)) if spec.wants_gpus and (spec.base_image == AUTO or memory) else ""
    facts = parse_facts(asked) if asked else None
    choice = choose(spec, facts, facts.box_base if facts else "")
    return resolved(spec, choice), choice, asked
