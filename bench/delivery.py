"""`python -m bench.delivery`: delivery at real sizes, devbox against `docker save | ssh docker load`.

The image is bench/bigimage.py's PyTorch-sized one (~3.3 GB of random layers) with
devbox's ssh layers on top. The host is a fake host (real sshd on loopback) whose user's
`docker` is a second dockerd of its own (devbox/testbed.py), emptied before every run so
each contender sends everything. Runs alternate (devbox, save|load, devbox, …) after
one warm-up pair; ratios are of the medians. Then, with the big base already on the
host, the bytes devbox sends are set against its own layers. Last, compression by
measurement of the compressors here and arithmetic for a 1 Gbit/s link.

    python -m bench.delivery               # 3 counted pairs (about 8 minutes on 2 cores)
    python -m bench.delivery --runs 5
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import bigimage
from bench.timing import Cmd, interleave, ratio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
import testbed as tb  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DEVBOX = Path(sys.executable).parent / "devbox"
HOST = "gpu-engine-bench"
LINK_1G = 125e6   # bytes/s of a 1 Gbit/s link


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Bed:
    """One fake host on loopback whose `docker` is an engine of its own, and a laptop."""

    def __init__(self, base: str = bigimage.BIG_IMAGE):
        self.workdir = Path(tempfile.mkdtemp(prefix="devbox-bench-delivery-", dir="/var/lib"))
        self.testbed = tb.start_testbed(self.workdir, [])
        root = self.workdir / "engine"
        root.mkdir()
        self.engine = tb.start_second_engine(root, [], address_pool="10.148.0.0/16")
        self.host = tb.start_engine_host(HOST, self.workdir, self.workdir / "authorized_keys", self.engine)
        self.laptop = tb.make_laptop(self.workdir / "home", self.testbed, {HOST: self.host})
        self.env = {**os.environ, "HOME": str(self.laptop.home), "PYTHONUNBUFFERED": "1"}
        self.env.pop("DEVBOX_SSH_CONFIG", None)
        self.project = self.workdir / "project"
        (self.project / "keys").mkdir(parents=True)
        (self.project / "devbox.toml").write_text(
            f'[defaults]\nplaybook = "cpu"\nbase_image = "{base}"\ndelivery = "stream"\n')

    def empty_engine(self) -> None:
        ids = self.engine.docker("ps", "-aq").stdout.split()
        if ids:
            self.engine.docker("rm", "-f", *ids)
        self.engine.docker("system", "prune", "-af", "--volumes", check=True)
        assert self.engine.docker("image", "ls", "-aq").stdout.split() == []

    def devbox_up(self, transport: str = "") -> dict:
        """`transport` "paramiko" forces devbox's stream through paramiko (default: the OpenSSH client)."""
        env = {**self.env, **({"DEVBOX_STREAM_TRANSPORT": transport} if transport else {})}
        done = subprocess.run([str(DEVBOX), "up", HOST, "--no-verify", "--repin", "--json"], cwd=self.project, env=env,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=1800)
        report = json.loads(done.stdout)[0] if done.stdout.startswith("[") else {}
        if done.returncode != 0 or report.get("delivery") != "stream-missing-layers":
            raise RuntimeError(f"devbox up: exit {done.returncode}\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}")
        return report

    def save_load(self, tag: str) -> int:
        return save_into_ssh_load(tag, ["ssh", "-F", str(self.laptop.ssh_config), "-o", "BatchMode=yes", HOST])

    def stop(self) -> None:
        subprocess.run(["docker", "rm", "-f", *subprocess.run(["docker", "ps", "-aq", "--filter", f"label=devbox.host={HOST}"],
                                                              capture_output=True, text=True).stdout.split()], capture_output=True)
        self.host.stop()
        self.engine.stop()
        self.testbed.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def sent_by(report: dict) -> dict:
    return {"bytes_sent": report["bytes_sent"], "transport": report.get("transport", "")}


def save_into_ssh_load(tag: str, ssh: list[str]) -> int:
    """`docker save TAG | ssh … docker load -q`, counting the bytes that cross."""
    save = subprocess.Popen(["docker", "save", tag], stdout=subprocess.PIPE)
    load = subprocess.Popen([*ssh, "docker", "load", "-q"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sent = 0
    while chunk := save.stdout.read(1 << 20):
        load.stdin.write(chunk)
        sent += len(chunk)
    load.stdin.close()
    if save.wait() != 0 or load.wait() != 0:
        raise RuntimeError(f"docker save | ssh docker load failed: {load.stderr.read()[-500:]}")
    return sent


def layer_bytes(tag: str, above: str) -> int:
    """Bytes of the layer files `docker save` holds for tag's layers not in `above`."""
    from devbox.delivery import inspect_local, todo_bytes

    image, base = inspect_local(tag), inspect_local(above)
    return todo_bytes(tag, [d in base.diff_ids for d in image.diff_ids]) or 0


def compression(sample_mb: int = 256) -> dict:
    """Throughput and ratio of gzip -1 and zstd -1/-3 (one core, as a pipeline gets) on a
    random layer (what the bench image holds) and on a real OS layer (the Debian base)."""
    samples = {"random (bench image layers)": f"head -c {sample_mb}M /dev/urandom",
               "real OS files (debian base layer)": f"docker save {tb.BASE_IMAGE}"}
    out = {}
    for label, source in samples.items():
        data = subprocess.run(["bash", "-c", source + f" | head -c {sample_mb}M"], capture_output=True, check=True).stdout
        row = {"bytes": len(data)}
        for name, argv in (("gzip -1", ["gzip", "-1", "-c"]), ("zstd -1", ["zstd", "-1", "-c", "-T1"]), ("zstd -3", ["zstd", "-3", "-c", "-T1"])):
            if not shutil.which(argv[0]):
                continue
            start = time.perf_counter()
            packed = subprocess.run(argv, input=data, capture_output=True, check=True).stdout
            seconds = time.perf_counter() - start
            row[name] = {"ratio": round(len(packed) / len(data), 3), "MB_per_s": round(len(data) / seconds / 1e6, 1)}
        out[label] = row
    return out


def link_arithmetic(size: int, link: float, comp: dict) -> list[dict]:
    """Seconds to move `size` bytes over `link` B/s, raw or through each compressor (a pipeline
    runs at its slowest stage: the compressor or the link carrying the smaller stream)."""
    rows = [{"how": "uncompressed", "seconds": round(size / link, 1)}]
    for label, row in comp.items():
        for name, fig in row.items():
            if isinstance(fig, dict):
                seconds = max(size / (fig["MB_per_s"] * 1e6), size * fig["ratio"] / link)
                rows.append({"how": f"{name} on {label}", "seconds": round(seconds, 1)})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.delivery", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="counted pairs (default 3; one warm-up pair first)")
    p.add_argument("--out", type=Path, default=RESULTS / "delivery.json")
    p.add_argument("--paramiko", action="store_true", help="a third contender: devbox streaming through paramiko")
    p.add_argument("--only-stream", action="store_true", help="stop after the timed runs (no base-present or compression part)")
    args = p.parse_args(argv)
    reason = tb.testbed_unavailable_reason()
    if reason:
        raise SystemExit(f"bench needs the real test bed: {reason}")
    tag = bigimage.ensure_box_image(tb.BASE_IMAGE, log)
    log(f"== delivery at real sizes: {tag} on {bigimage.BIG_IMAGE}")
    bed = Bed()
    results: dict = {"image": tag, "base": bigimage.BIG_IMAGE, "runs": args.runs, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                     "command": "python -m bench.delivery " + " ".join(argv or sys.argv[1:])}
    try:
        devbox = Cmd("devbox up (stream, whole process)", lambda i: sent_by(bed.devbox_up()),
                     prep=lambda i: bed.empty_engine())
        raw = Cmd("docker save IMG | ssh HOST docker load", lambda i: {"bytes_sent": bed.save_load(tag)},
                  prep=lambda i: bed.empty_engine())
        contenders = [devbox, raw]
        if args.paramiko:
            contenders.append(Cmd("devbox up (stream through paramiko)", lambda i: sent_by(bed.devbox_up("paramiko")),
                                  prep=lambda i: bed.empty_engine()))
        interleave(contenders, args.runs, log=log)
        results["commands"] = [c.summary() for c in contenders]
        results["ratio"] = ratio(devbox, raw)
        if args.paramiko:
            results["ratio_paramiko"] = ratio(contenders[2], raw)
        if not args.only_stream:
            log("== base already on the host: bytes devbox sends against its own layers")
            bed.empty_engine()
            tb.seed(bed.engine.docker_host, [bigimage.BIG_IMAGE])
            started = time.perf_counter()
            report = bed.devbox_up()
            own = layer_bytes(tag, bigimage.BIG_IMAGE)
            results["base_present"] = {"bytes_sent": report["bytes_sent"], "own_layers": own,
                                       "ratio": round(report["bytes_sent"] / own, 4), "seconds": round(time.perf_counter() - started, 2)}
    finally:
        bed.stop()
    if not args.only_stream:
        log("== compression: the compressors here, and a 1 Gbit/s link by arithmetic")
        comp = compression()
        results["compression"] = comp
        size = max(e["bytes_sent"] for e in devbox.extras)
        results["link_1gbit"] = link_arithmetic(size, LINK_1G, comp)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
