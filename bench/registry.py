"""`python -m bench.registry`: `devbox up` from empty on N hosts, each its own Docker engine,
through the team's registry against streaming the image to each host: bytes leaving this
machine and wall time, in the same run, alternating (registry, stream, …) after a warm-up pair.

The hosts are fake hosts (real sshd on loopback) whose user's `docker` is a second dockerd
of their own, sharing this machine's network (so they reach the registry on 127.0.0.1, as
lab hosts reach the lab's). Before every run each engine is emptied (`system prune -af
--volumes`) and the registry restarted on empty storage, so both contenders start from
nothing. Bytes from this machine: through the registry, what the registry stored (the
compressed blobs the one push uploaded; the pulls go host to registry); streaming, the
`bytes_sent` each host's report gives.

    python -m bench.registry                 # 4 hosts, 3 counted pairs
    python -m bench.registry --hosts 2 --runs 1
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
import testbed as tb  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SUFFIX = "-regbench"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Bed:
    def __init__(self, n: int):
        self.workdir = Path(tempfile.mkdtemp(prefix="devbox-bench-registry-", dir="/var/lib"))
        self.workdir.chmod(0o755)
        self.names = [f"reg-{i}{SUFFIX}" for i in range(n)]
        self.engines, self.hosts = [], {}
        self.registry = self.testbed = None
        self.n = n

    def start(self) -> None:
        from devbox.image import ImageSpec, build_locally

        self.tag = build_locally(ImageSpec(tb.BASE_IMAGE)).tag
        self.testbed = tb.start_testbed(self.workdir, [])
        pools: set[str] = set()
        for i, name in enumerate(self.names):
            while (pool := tb.free_address_pool()) in pools:
                pass
            pools.add(pool)
            root = self.workdir / f"engine-{i}"
            root.mkdir()
            self.engines.append(tb.start_second_engine(root, [], pool, kind=2 + i))
            self.hosts[name] = tb.start_fake_host(name, 70 + i, self.workdir, self.workdir / "authorized_keys",
                                                  extra=f"SetEnv DOCKER_HOST={self.engines[-1].docker_host}\n")
        self.laptop = tb.make_laptop(self.workdir / "home", self.testbed, self.hosts)
        self.env = {**os.environ, "HOME": str(self.laptop.home), "PYTHONUNBUFFERED": "1"}
        self.env.pop("DEVBOX_SSH_CONFIG", None)
        self.restart_registry()

    def restart_registry(self) -> None:
        port = None
        if self.registry:
            port = int(self.registry.address.rpartition(":")[2])
            self.registry.stop()
        self.registry = tb.start_registry(self.workdir / "registry", port=port)

    def project(self, kind: str) -> Path:
        folder = self.workdir / f"project-{kind}"
        (folder / "keys").mkdir(parents=True, exist_ok=True)
        how = f'registry = "{self.registry.address}/devbox"\ndelivery = "registry"\n' if kind == "registry" else 'delivery = "stream"\n'
        (folder / "devbox.toml").write_text(f'[defaults]\nplaybook = "cpu"\nbase_image = "{tb.BASE_IMAGE}"\n{how}')
        return folder

    def empty(self) -> None:
        def prune(engine):
            engine.remove_containers()
            engine.docker("system", "prune", "-af", "--volumes", timeout=300)

        for engine in self.engines:
            prune(engine)
        self.restart_registry()

    def run(self, kind: str) -> dict:
        self.empty()
        before = self.registry.stored_bytes()
        start = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "devbox.cli", "up", *self.names, "--no-verify", "--repin", "--json"],
                              cwd=self.project(kind), env=self.env, capture_output=True, text=True, timeout=1800)
        seconds = time.monotonic() - start
        reports = json.loads(done.stdout) if done.stdout.startswith("[") else []
        if done.returncode != 0:
            why = [(r["host"], r["exit_code"], r.get("error")) for r in reports] or done.stderr[-1500:]
            raise RuntimeError(f"{kind} run failed (exit {done.returncode}): {why}")
        stored = self.registry.stored_bytes() - before
        sent = stored if kind == "registry" else sum(r["bytes_sent"] for r in reports)
        return {"kind": kind, "seconds": round(seconds, 2), "bytes_from_laptop": sent,
                "deliveries": sorted({r["delivery"] for r in reports}), "transports": sorted({r.get("transport", "") for r in reports})}

    def stop(self) -> None:
        if self.registry:
            self.registry.stop()
        for host in self.hosts.values():
            host.stop()
        for engine in self.engines:
            engine.stop()
        if self.testbed:
            self.testbed.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def image_bytes(tag: str) -> int:
    """The image as `docker save` writes it (what one stream of everything carries)."""
    save = subprocess.Popen(["docker", "save", tag], stdout=subprocess.PIPE)
    total = 0
    while chunk := save.stdout.read(1 << 20):
        total += len(chunk)
    save.wait()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    bed = Bed(args.hosts)
    try:
        log(f"  … {args.hosts} hosts with engines of their own, a registry on 127.0.0.1")
        bed.start()
        log("  … warm-up pair")
        bed.run("registry"), bed.run("stream")
        rounds = []
        for i in range(args.runs):
            for kind in ("registry", "stream"):
                rounds.append(bed.run(kind))
                log(f"  … round {i + 1} {kind}: {rounds[-1]}")
        summary = {"hosts": args.hosts, "image": bed.tag, "save_bytes": image_bytes(bed.tag), "rounds": rounds,
                   "load": os.getloadavg(), "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    finally:
        bed.stop()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "registry.json").write_text(json.dumps(summary, indent=1))
    print("| delivery | wall s (each run) | bytes from this machine (each run) |\n| --- | --- | --- |")
    for kind in ("registry", "stream"):
        mine = [r for r in rounds if r["kind"] == kind]
        print(f"| {kind} | {', '.join(str(r['seconds']) for r in mine)} | "
              + ", ".join(f"{r['bytes_from_laptop'] / 1e6:.1f} MB" for r in mine) + " |")
    print(f"\n`docker save` of {bed.tag}: {summary['save_bytes'] / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
