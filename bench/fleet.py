"""`python -m bench.fleet`: devbox over a fleet of hosts plus one that drops every packet,
side by side with an OpenSSH `xargs -P N` loop sending the very same state query.

The bed: N fake hosts (real sshd on 127.0.0.10..), all backed by one Docker engine of the
bench's own (with an address pool wide enough for one network per box), seeded with the
base and the box image; one dead host (a namespace whose iptables DROPs all input) with
`ConnectTimeout` in its Host block. After a first `up` of every box, each round runs, in
turn: `devbox status --all`, the xargs loop over the same hosts, and a no-op `devbox up`
over them, with and without the dead host. Also measured: the devbox process's peak RSS
against one `ssh` process's, and SSH connections each host's sshd accepted per command.

    python -m bench.fleet                    # 100 hosts, --parallel 16, 3 rounds
    python -m bench.fleet --hosts 20 --runs 2
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import bed as B
from bench.timing import Cmd, interleave, median, ratio

tb = B.tb
RESULTS = B.BENCH / "results"
SUFFIX = "-fleet"
POOL = "10.150.0.0/16"   # 256 /24 networks: one per box (Docker's default pools hold ~30)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Fleet:
    """Everything the bench starts, so stop() can undo it in reverse."""

    def __init__(self, n: int, dead_timeout: int):
        self.workdir = Path(tempfile.mkdtemp(prefix="devbox-fleet-", dir="/var/lib"))
        self.workdir.chmod(0o755)
        self.names = [f"fleet-{i}{SUFFIX}" for i in range(n)]
        self.dead = f"fleet-dead{SUFFIX}"
        self.dead_timeout = dead_timeout
        self.engine = self.dead_bed = self.testbed = None

    def start(self) -> None:
        from devbox.image import ImageSpec, build_locally

        tag = build_locally(ImageSpec(tb.BASE_IMAGE)).tag
        log(f"  … engine of our own (pool {POOL}), seeded with {tb.BASE_IMAGE} and {tag}")
        (self.workdir / "engine").mkdir(mode=0o755)
        self.engine = tb.start_second_engine(self.workdir / "engine", [tb.BASE_IMAGE, tag], address_pool=POOL)
        tb.ensure_user(tb.OPS_USER, docker_group=True)
        identity = tb.keygen(self.workdir / "laptop_ed25519", "laptop")
        authorized = self.workdir / "authorized_keys"
        authorized.write_text(Path(str(identity) + ".pub").read_text())
        authorized.chmod(0o644)
        self.testbed = tb.TestBed(self.workdir, identity)
        log(f"  … {len(self.names)} sshd hosts on 127.0.0.10..{9 + len(self.names)} and one dead host")
        env = f"SetEnv DOCKER_HOST={self.engine.docker_host}\n"
        for i, name in enumerate(self.names):
            self.testbed.hosts[name] = tb.start_fake_host(name, i, self.workdir, authorized, extra=env)
        self.dead_bed, dead_address = tb.start_dead_host(self.workdir / "dead", "fleetd")
        self.laptop = tb.make_laptop(self.workdir / "home", self.testbed)
        with self.laptop.ssh_config.open("a") as config:
            config.write(f"Host {self.dead}\n    HostName {dead_address}\n    User {tb.OPS_USER}\n"
                         f"    IdentityFile {self.laptop.identity}\n    ConnectTimeout {self.dead_timeout}\n\n")
        self.project = self.workdir / "project"
        (self.project / "keys").mkdir(parents=True)
        (self.project / "devbox.toml").write_text(
            f'[defaults]\nplaybook = "cpu"\nbase_image = "{tb.BASE_IMAGE}"\n\n[hosts."{self.dead}"]\n')
        self.env = {**os.environ, "HOME": str(self.laptop.home), "PYTHONUNBUFFERED": "1"}

    def devbox(self, *args: str, timeout: float = 1800) -> tuple[list, int]:
        """Run devbox under GNU time; its JSON rows and its peak RSS (KiB)."""
        rss = self.workdir / "rss"
        done = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(rss), str(B.DEVBOX), *args, "--json"], cwd=self.project,
                              env=self.env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        try:
            rows = json.loads(done.stdout)
        except json.JSONDecodeError:
            raise RuntimeError(f"devbox {args[0]}: exit {done.returncode}, no JSON: {done.stderr[-1500:]}")
        return rows, int(rss.read_text().split()[-1])

    def connections(self) -> dict[str, int]:
        return {n: (self.workdir / n / "sshd.log").read_text(errors="replace").count("Connection from ") for n in self.names}

    def stop(self) -> None:
        for step in (lambda: self.testbed and self.testbed.stop(), lambda: self.dead_bed and self.dead_bed.stop(),
                     self._stop_engine):
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - go on cleaning; say what stayed
                log(f"  ! cleanup: {exc}")
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _stop_engine(self) -> None:
        if self.engine:
            ids = self.engine.docker("ps", "-aq").stdout.split()
            if ids:
                self.engine.docker("rm", "-f", *ids)
            self.engine.docker("network", "prune", "-f")   # their bridges would outlive the engine
            self.engine.stop()


def state_scripts(fleet: Fleet, hosts: list[str]) -> Path:
    """One file per host holding the script `devbox status` sends it (devbox.facts.state_script)."""
    sys.path.insert(0, str(B.REPO))
    from devbox.config import load_spec
    from devbox.facts import state_script
    from devbox.image import content_tag

    folder = fleet.workdir / "scripts"
    folder.mkdir(exist_ok=True)
    for host in hosts:
        spec = load_spec(host, fleet.project / "devbox.toml")
        (folder / host).write_text(state_script(spec, content_tag(spec.image)))
    return folder


def xargs_cmd(fleet: Fleet, hosts: list[str], parallel: int, scripts: Path) -> list[str]:
    ssh = (f"ssh -F {shlex.quote(str(fleet.laptop.ssh_config))} -o BatchMode=yes -o ConnectTimeout={fleet.dead_timeout} "
           f"\"$0\" sh < {shlex.quote(str(scripts))}/\"$0\" > /dev/null")
    return ["sh", "-c", f"printf '%s\\n' {' '.join(map(shlex.quote, hosts))} | xargs -P {parallel} -n 1 sh -c {shlex.quote(ssh)}"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", type=int, default=100)
    p.add_argument("--parallel", type=int, default=16)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--dead-timeout", type=int, default=5, help="the dead host's ConnectTimeout (s)")
    p.add_argument("--out", type=Path, default=RESULTS / "fleet.json")
    p.add_argument("--keep", action="store_true", help="after the first up, print HOME and the project folder and wait for Ctrl-C (to poke at the fleet)")
    args = p.parse_args(argv)
    fleet = Fleet(args.hosts, args.dead_timeout)
    results: dict = {"hosts": args.hosts, "parallel": args.parallel, "runs": args.runs, "dead_timeout_s": args.dead_timeout}
    try:
        fleet.start()
        live, every = fleet.names, [*fleet.names, fleet.dead]
        par = ["--parallel", str(args.parallel)]
        t = time.perf_counter()
        rows, rss = fleet.devbox("up", *live, *par, "--no-verify")
        failed = [(r["host"], r["error"]) for r in rows if r["exit_code"]]
        results["first_up"] = {"seconds": round(time.perf_counter() - t, 1), "failed": failed, "peak_rss_kib": rss}
        log(f"    first up of {len(live)} boxes: {results['first_up']['seconds']} s, {len(failed)} failed {failed[:3]}")
        if failed:
            raise RuntimeError(f"first up failed on {len(failed)} hosts: {failed[:5]}")
        if args.keep:
            log(f"    fleet kept: HOME={fleet.laptop.home} cd {fleet.project}  (Ctrl-C to clean up)")
            while True:
                time.sleep(3600)
        scripts = state_scripts(fleet, every)
        peaks: dict[str, list[int]] = {}

        def run_devbox(label: str, *args_: str, expect_dead: bool):
            def run(i):
                out, peak = fleet.devbox(*args_, *par)
                peaks.setdefault(label, []).append(peak)
                bad = [r["host"] for r in out if r["exit_code"]]
                assert bad == ([fleet.dead] if expect_dead else []), bad
                assert all(r.get("changed") in (None, False) for r in out), "a no-op changed something"
            return Cmd(label, run)

        def run_xargs(label: str, hosts: list[str]):
            argv_ = xargs_cmd(fleet, hosts, args.parallel, scripts)
            return Cmd(label, lambda i: subprocess.run(argv_, capture_output=True, timeout=900) and None)

        n = len(live)
        cmds = [run_devbox(f"devbox status --all ({n} + dead)", "status", "--all", expect_dead=True),
                run_xargs(f"xargs -P {args.parallel} ssh state-script ({n} + dead)", every),
                run_devbox(f"devbox up, no-op ({n} + dead)", "up", *every, expect_dead=True),
                run_devbox(f"devbox status ({n} live)", "status", *live, expect_dead=False),
                run_xargs(f"xargs -P {args.parallel} ssh state-script ({n} live)", live),
                run_devbox(f"devbox up, no-op ({n} live)", "up", *live, expect_dead=False)]
        interleave(cmds, args.runs, log=log)
        results["commands"] = [c.summary() for c in cmds]
        results["ratios"] = [ratio(cmds[0], cmds[1]), ratio(cmds[2], cmds[1]), ratio(cmds[3], cmds[4]), ratio(cmds[5], cmds[4])]
        # Connections and memory, one command at a time.
        before = fleet.connections()
        fleet.devbox("status", *live, *par)
        time.sleep(0.5)
        per_host = {h: c - before[h] for h, c in fleet.connections().items()}
        ssh_rss = subprocess.run(["/usr/bin/time", "-f", "%M", "ssh", "-F", str(fleet.laptop.ssh_config), "-o", "BatchMode=yes",
                                  live[0], "sh"], input=(scripts / live[0]).read_text(), capture_output=True, text=True)
        results["connections_per_host"] = sorted(set(per_host.values()))
        results["peak_rss_kib"] = {label: max(v) for label, v in peaks.items()}
        results["one_ssh_process_rss_kib"] = int(ssh_rss.stderr.split()[-1])
        results["goals"] = [{"goal": f"devbox status --all / xargs -P {args.parallel} ({n} hosts + dead)",
                             "measured": results["ratios"][0]["of_medians"], "target": "<= 1.0x",
                             "met": results["ratios"][0]["of_medians"] <= 1.0},
                            {"goal": f"devbox no-op up / xargs -P {args.parallel} ({n} hosts + dead)",
                             "measured": results["ratios"][1]["of_medians"], "target": "<= 1.0x",
                             "met": results["ratios"][1]["of_medians"] <= 1.0},
                            {"goal": f"devbox status / xargs ({n} live hosts)", "measured": results["ratios"][2]["of_medians"],
                             "target": "<= 1.0x", "met": results["ratios"][2]["of_medians"] <= 1.0},
                            {"goal": f"devbox no-op up / xargs ({n} live hosts)", "measured": results["ratios"][3]["of_medians"],
                             "target": "<= 1.0x", "met": results["ratios"][3]["of_medians"] <= 1.0}]
        log(json.dumps({k: results[k] for k in ("goals", "connections_per_host", "peak_rss_kib", "one_ssh_process_rss_kib")}, indent=1))
        for c in cmds:
            log(f"    {c.label}: median {median(c):.2f} s")
    finally:
        log("  … cleaning up (sshds, dead host namespace, engine and its boxes)")
        fleet.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
