"""`python -m bench.bigimage`: a PyTorch-sized test image, built here from incompressible data.

Layers shaped like pytorch/pytorch:*-cuda*-runtime (which cannot be pulled here): the local
Debian base, one ~2 GB "CUDA" layer, one ~1 GB "torch" layer and two small ones on top,
each of random bytes so no compressor or dedup flatters a transfer. Built once and kept
under a fixed tag (its label says what made it), so later runs only check it is there.
devbox's own ssh layers are then built on it (`devbox build --base BIG_IMAGE`).

    python -m bench.bigimage            # build if missing; print the tag and layer sizes
    python -m bench.bigimage --remove   # delete it (and the devbox image built on it)
    python -m bench.bigimage --2.5      # the same for issue 26's 2.5 GB image (MID_IMAGE)
"""
from __future__ import annotations

import subprocess
import sys
import time

BIG_IMAGE = "local/bench-pytorch:big-v1"
LABEL = "devbox.bench=bigimage-v1"   # a new recipe gets a new tag and label: never a stale cache
# (name, MiB): the layers above the base, bottom first.
LAYERS = (("cuda", 2048), ("torch", 1024), ("python-libs", 64), ("app", 4))
# Issue 26's size: 2.5 GB as `docker save` writes it with devbox's layers (base 199 MB + these + 23 MB).
MID_IMAGE = "local/bench-pytorch:2g5-v1"
MID_LAYERS = (("cuda", 1370), ("torch", 640), ("python-libs", 64), ("app", 4))
RECIPES = {BIG_IMAGE: LAYERS, MID_IMAGE: MID_LAYERS}


def label(layers=LAYERS) -> str:
    """The recipe's label: the first recipe's as it always was, the others' with their size."""
    return LABEL if layers == LAYERS else f"{LABEL}-{sum(m for _, m in layers)}m"


def dockerfile(base: str, layers=LAYERS) -> str:
    lines = [f"FROM {base}", f"LABEL {label(layers)}"]
    lines += [f"RUN mkdir -p /opt/{name} && head -c {mib}M /dev/urandom > /opt/{name}/blob.bin" for name, mib in layers]
    return "\n".join(lines) + "\n"


def present(tag: str = BIG_IMAGE) -> bool:
    done = subprocess.run(["docker", "image", "inspect", "--format", "{{json .Config.Labels}}", tag], capture_output=True, text=True)
    return done.returncode == 0 and f'"{label(RECIPES[tag]).split("=")[1]}"' in done.stdout


def ensure(base: str, log=print, tag: str = BIG_IMAGE) -> str:
    """The big image's tag, built first if this machine lacks it (about 2 minutes on 2 cores)."""
    if present(tag):
        return tag
    log(f"  … building {tag} ({sum(m for _, m in RECIPES[tag])} MiB of random layers on {base}; once)")
    started = time.perf_counter()
    subprocess.run(["docker", "build", "-q", "-t", tag, "-"], input=dockerfile(base, RECIPES[tag]), text=True, check=True,
                   capture_output=True)
    log(f"    built in {time.perf_counter() - started:.0f} s")
    return tag


def ensure_box_image(base: str, log=print, tag: str = BIG_IMAGE) -> str:
    """The devbox image on the big image (devbox's own build, so its tag is the content tag)."""
    from devbox.image import ImageSpec, build_locally

    return build_locally(ImageSpec(ensure(base, log, tag)), on_progress=lambda line: None).tag


def remove(tag: str = BIG_IMAGE) -> None:
    from devbox.image import ImageSpec, content_tag

    subprocess.run(["docker", "rmi", content_tag(ImageSpec(tag)), tag], capture_output=True)


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent / "tests"))
    import testbed as tb

    base = MID_IMAGE if "--2.5" in argv else BIG_IMAGE
    if "--remove" in argv:
        remove(base)
        return 0
    tag = ensure_box_image(tb.BASE_IMAGE, tag=base)
    sizes = subprocess.run(["docker", "history", "--format", "{{.Size}}\t{{.CreatedBy}}", tag], capture_output=True, text=True).stdout
    print(tag)
    print("\n".join(line[:100] for line in sizes.splitlines() if not line.startswith("0B")))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
