"""`python -m bench`: devbox side by side with raw OpenSSH, Ansible and docker save|load.

Sets up the real test bed (fake hosts = real sshd on loopback, the shared dockerd),
runs each comparison interleaved (A B A B …), prints a table with min/median and the
ratios against their goals, and writes JSON (default bench/results/latest.json) plus
the same table as Markdown (bench/results/latest.md) for docs/PERFORMANCE.md.

    python -m bench            # full: 50 hosts, 5 runs (about 6-9 minutes on 2 cores)
    python -m bench --quick    # smoke: 10 hosts, 2 runs, 1 cold build
    python -m bench --only noop,startup --runs 3
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

from bench import bed as B
from bench.timing import Cmd, interleave, median, ratio

RESULTS = B.BENCH / "results"
STAGES = ("startup", "status", "noop", "fanout", "delivery")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- machine


def machine() -> dict:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")), "?")
    def out(*argv):
        done = subprocess.run(argv, capture_output=True, text=True)
        return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr).strip() else "?"
    import os
    return {"nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(), "python": platform.python_version(),
            "docker": out("docker", "version", "--format", "{{.Server.Version}}"), "openssh": out("ssh", "-V"),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


# ---------------------------------------------------------------- helpers


def devbox_json(bed: B.Bed, *args: str, cwd: Path | None = None) -> list | dict:
    done = bed.devbox(*args, "--json", cwd=cwd, check=False)
    try:
        data = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"devbox {' '.join(args)}: exit {done.returncode}, no JSON\n{done.stdout[-800:]}\n{done.stderr[-800:]}")
    rows = data if isinstance(data, list) else [data]
    bad = [r for r in rows if r.get("exit_code", 0) != 0 or r.get("error")]
    if bad:
        why = [(r.get("host"), r.get("error") or [c for c in r.get("checks", []) if c.get("status") == "fail"]) for r in bad]
        raise RuntimeError(f"devbox {' '.join(args)} failed: {json.dumps(why)[:2500]}")
    return data


def image_size(tag: str) -> int:
    return int(B.sh("docker", "image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())


def goal(name: str, measured: float, target: str, ok: bool, note: str = "") -> dict:
    return {"goal": name, "measured": measured, "target": target, "met": ok, "note": note}


# ---------------------------------------------------------------- 4. start-up


def stage_startup(bed: B.Bed, runs: int) -> dict:
    log("== start-up: devbox --help")
    help_ = Cmd("devbox --help", lambda i: bed.devbox("--help") and None)
    floor = Cmd("python -c pass", lambda i: subprocess.run([sys.executable, "-c", "pass"], check=True) and None)
    interleave([help_, floor], max(runs * 2, 5), log=log)
    m = median(help_)
    return {"commands": [help_.summary(), floor.summary()], "ratios": [ratio(help_, floor)],
            "goals": [goal("devbox --help wall time", round(m, 3), "<= 0.3 s", m <= 0.3)]}


# ---------------------------------------------------------------- 3a. status fan-out


def child_cpu() -> float:
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def stage_status(bed: B.Bed, runs: int) -> dict:
    sizes = [n for n in (1, 10, 50) if n <= len(bed.hosts)]
    log(f"== fan-out: devbox status over {sizes} hosts (no boxes: each row = full SSH gather, 'absent')")
    from concurrent.futures import ThreadPoolExecutor
    import shlex

    sys.path.insert(0, str(B.REPO))
    from devbox.config import load_spec
    from devbox.facts import state_script
    from devbox.image import content_tag

    def status(n):
        def run(i):
            cpu = child_cpu()
            rows = devbox_json(bed, "status", *bed.hosts[:n])
            assert len(rows) == n and all(r["state"] in ("absent", "running") for r in rows), rows
            return {"devbox_process_cpu_s": round(child_cpu() - cpu, 3)}
        return run

    def raw(n):
        """The floor for the same work: n OpenSSH clients in parallel (32 at a time, as
        devbox's pool), each running the very script `devbox status` sends (state_script)."""
        scripts = {}
        for h in bed.hosts[:n]:
            spec = load_spec(h, bed.project / "devbox.toml")
            scripts[h] = "bash -c " + shlex.quote(state_script(spec, content_tag(spec.image)))

        def run(i):
            with ThreadPoolExecutor(32) as pool:
                done = list(pool.map(lambda h: bed.ssh(h, scripts[h]), bed.hosts[:n]))
            assert all(d.returncode == 0 for d in done)
        return run
    cmds = [Cmd(f"status {n} host{'s' if n > 1 else ''}", status(n)) for n in sizes]
    floors = [Cmd(f"raw: {n} x ssh HOST state-script, parallel", raw(n)) for n in sizes]
    interleave([c for pair in zip(cmds, floors) for c in pair], runs, log=log)
    r = ratio(cmds[-1], cmds[0])
    rf = ratio(floors[-1], floors[0])
    return {"commands": [c.summary() for pair in zip(cmds, floors) for c in pair],
            "ratios": [ratio(c, cmds[0]) for c in cmds[1:]] + [ratio(f, floors[0]) for f in floors[1:]]
                      + [ratio(c, f) for c, f in zip(cmds, floors)],
            "goals": [goal(f"status {sizes[-1]} hosts / 1 host", r["of_medians"], "<= 2.0x", r["of_medians"] <= 2.0,
                           f"same ratio for raw OpenSSH running the same script: {rf['of_medians']}x (all fake hosts share this machine's cores and dockerd)")]}


# ---------------------------------------------------------------- 1 + 5. no-op up, connections


ANSIBLE_PLAY = """\
- hosts: all
  gather_facts: false
  tasks:
    - name: the devbox container is there, started, from its image
      community.docker.docker_container:
        name: {box}
        image: {image}
        state: started
"""


def ansible_cmd(bed: B.Bed, host: str, box: str, image: str, persist: bool = True) -> Cmd | None:
    if not (B.ANSIBLE_VENV / "bin" / "ansible-playbook").exists():
        return None
    adir = bed.workdir / "ansible"
    (adir / "cp").mkdir(parents=True, exist_ok=True)
    (adir / "play.yml").write_text(ANSIBLE_PLAY.format(box=box, image=image))
    (adir / "inventory.yml").write_text(
        "all:\n  hosts:\n    " + host + ":\n"
        f"      ansible_ssh_common_args: '-F {bed.ssh_config}'\n"
        f"      ansible_python_interpreter: {B.TARGET_VENV}/bin/python\n")
    env = {**bed.env, "HOME": str(adir), "ANSIBLE_NOCOLOR": "1", "ANSIBLE_SSH_CONTROL_PATH_DIR": str(adir / "cp"),
           "ANSIBLE_LOCAL_TEMP": str(adir / "tmp"), "ANSIBLE_PYTHON_INTERPRETER": f"{B.TARGET_VENV}/bin/python"}
    if not persist:   # Ansible's first run in a while: no ControlPersist master to reuse
        env["ANSIBLE_SSH_ARGS"] = "-C -o ControlMaster=no"
    argv = [str(B.ANSIBLE_VENV / "bin" / "ansible-playbook"), "-i", str(adir / "inventory.yml"), str(adir / "play.yml"), "--check"]

    def run(i):
        done = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=adir, timeout=300)
        if done.returncode != 0 or "changed=0" not in done.stdout or "ok=1" not in done.stdout:
            raise RuntimeError(f"ansible-playbook: exit {done.returncode}\n{done.stdout[-1500:]}\n{done.stderr[-800:]}")
    return Cmd("ansible --check, warm (ControlPersist reused)" if persist else "ansible --check, cold (no ControlPersist)", run)


def close_ansible_masters(bed: B.Bed) -> None:
    """Ansible's ControlPersist masters (its default ssh_args) outlive the playbook: end ours."""
    for sock in (bed.workdir / "ansible" / "cp").glob("*"):
        subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "x"], capture_output=True)


def stage_noop(bed: B.Bed, runs: int) -> dict:
    host = bed.hosts[0]
    box = f"devbox-{host}"
    log(f"== no-op up on {host} (and SSH connections per up)")
    conns: dict = {}
    before = bed.sshd_connections(host)
    first = devbox_json(bed, "up", host)[0]   # changes something, so it verifies
    time.sleep(0.3)
    conns["first up (creates the box), with verify"] = bed.sshd_connections(host) - before
    for label, args in (("no-op up --verify", ("up", host, "--verify")), ("no-op up (default: verify only if changed)", ("up", host))):
        before = bed.sshd_connections(host)
        devbox_json(bed, *args)
        time.sleep(0.3)
        conns[label] = bed.sshd_connections(host) - before
    before = bed.sshd_connections(host)
    bed.ssh(host, "true")
    time.sleep(0.3)
    conns["floor: ssh -F cfg HOST true"] = bed.sshd_connections(host) - before
    log("    connections to the host's sshd: " + ", ".join(f"{k} = {v}" for k, v in conns.items()))
    image = B.sh("docker", "inspect", "--format", "{{.Config.Image}}", box).stdout.strip()

    def up(*extra):
        def run(i):
            report = devbox_json(bed, "up", host, *extra)[0]
            assert report["changed"] is False and report["steps"] == [], report
        return run

    def floor(i):
        done = bed.ssh(host, "docker", "inspect", box)
        assert done.returncode == 0, done.stderr
    cmds = [Cmd("devbox up --verify", up("--verify")), Cmd("devbox up (no-op: no verify)", up()),
            Cmd("ssh HOST docker inspect", floor)]
    ansible = ansible_cmd(bed, host, box, image)
    ansible_cold = ansible_cmd(bed, host, box, image, persist=False)
    if ansible:
        cmds += [ansible, ansible_cold]
    try:
        interleave(cmds, runs, log=log)
    finally:
        close_ansible_masters(bed)
    upv, upn, raw = cmds[:3]
    ratios = [ratio(upn, raw), ratio(upv, raw)]
    goals = [goal("no-op up / raw ssh docker inspect", ratio(upn, raw)["of_medians"], "<= 2.0x", ratio(upn, raw)["of_medians"] <= 2.0),
             goal("no-op up --verify / raw ssh docker inspect", ratio(upv, raw)["of_medians"], "<= 2.0x", ratio(upv, raw)["of_medians"] <= 2.0)]
    if ansible:
        for a in (ansible, ansible_cold):
            for mine in (upn, upv):
                r = ratio(a, mine)
                ratios.append(r)
                goals.append(goal(f"{a.label} / {mine.label} (speed-up)", r["of_medians"], ">= 5x", r["of_medians"] >= 5.0))
    n_verify, n_noverify = conns["no-op up --verify"], conns["no-op up (default: verify only if changed)"]
    goals.append(goal("SSH connections to the host per no-op up", n_noverify, "1", n_noverify == 1))
    goals.append(goal("SSH connections to the host per up (verify; box session tunnels inside it)", n_verify, "1 (+1 for the OpenSSH-client check)",
                      n_verify <= 2, "the extra one is verify's `ssh devbox-HOST true`, which ProxyJumps through the host"))
    return {"commands": [c.summary() for c in cmds], "ratios": ratios, "goals": goals, "connections": conns,
            "first_up_seconds": first["seconds"]}


# ---------------------------------------------------------------- 3b. up fan-out


def stage_fanout(bed: B.Bed, runs: int) -> dict:
    n = min(10, len(bed.hosts))
    hosts = bed.hosts[:n]
    log(f"== fan-out: no-op devbox up on {n} hosts vs 1")
    start = time.perf_counter()
    done = bed.devbox("up", *hosts, "--json", check=False)
    try:
        first = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"devbox up: exit {done.returncode}, no JSON\n{done.stdout[-800:]}\n{done.stderr[-1500:]}")
    cold = time.perf_counter() - start
    failed = {r["host"]: r["error"] or [c for c in r["checks"] if c["status"] == "fail"] for r in first if r["exit_code"]}
    log(f"    first up on {n} hosts (creates {n} boxes, verifies): {cold:.1f}s" + (f"; FAILED: {failed}" if failed else ""))
    if failed:   # a failed check still leaves the box up: record it and measure the no-op runs
        devbox_json(bed, "up", *failed)

    def up(k, *extra):
        def run(i):
            reports = devbox_json(bed, "up", *hosts[:k], *extra)
            assert all(r["changed"] is False for r in reports), reports
        return run
    cmds = interleave([Cmd("up 1 host --verify", up(1, "--verify")), Cmd(f"up {n} hosts --verify", up(n, "--verify")),
                       Cmd("up 1 host", up(1)), Cmd(f"up {n} hosts", up(n))],
                      runs, log=log)
    rv, rn = ratio(cmds[1], cmds[0]), ratio(cmds[3], cmds[2])
    return {"commands": [c.summary() for c in cmds], "ratios": [rv, rn], "first_up_n_hosts_s": round(cold, 2), "first_up_failures": failed,
            "goals": [goal(f"no-op up {n} hosts / 1 host (--verify)", rv["of_medians"], "<= 2.0x", rv["of_medians"] <= 2.0),
                      goal(f"no-op up {n} hosts / 1 host", rn["of_medians"], "<= 2.0x", rn["of_medians"] <= 2.0)]}


# ---------------------------------------------------------------- 2. delivery


HEAVY_DOCKERFILE = """\
FROM {base}
LABEL devbox.bench=heavy-base
RUN head -c {mb}M /dev/urandom > /opt/ballast.bin
"""


def stage_delivery(bed: B.Bed, runs: int, cold_runs: int, ballast_mb: int) -> dict:
    host = bed.hosts[-1]
    log(f"== delivery on {host}: base {B.HEAVY_BASE} (+{ballast_mb} MB incompressible) present, devbox image absent")
    if subprocess.run(["docker", "image", "inspect", B.HEAVY_BASE], capture_output=True).returncode != 0:
        t = time.perf_counter()
        B.sh("docker", "build", "-q", "-t", B.HEAVY_BASE, "-", input=HEAVY_DOCKERFILE.format(base=B.tb.BASE_IMAGE, mb=ballast_mb))
        log(f"    built {B.HEAVY_BASE} in {time.perf_counter() - t:.1f}s")
    bed.made_images.add(B.HEAVY_BASE)
    uid0 = random.randint(5000, 60000)   # fresh uids: never in the build cache, never tagged before

    def project(uid: int) -> Path:
        return bed.project_dir("project-heavy", f'[defaults]\nplaybook = "cpu"\nbase_image = "{B.HEAVY_BASE}"\n'
                                                f'uid = {uid}\ngid = {uid}\ndelivery = "build"\n')

    def up(uid: int) -> dict:
        report = devbox_json(bed, "up", host, "--no-verify", "--repin", cwd=project(uid))[0]   # fresh volumes = new box key
        assert report["delivery"] == "build-on-host", report
        tag = B.sh("docker", "inspect", "--format", "{{.Config.Image}}", f"devbox-{host}").stdout.strip()
        bed.made_images.add(tag)
        return {"bytes_sent": report["bytes_sent"], "tag": tag, "up_s": report["seconds"],
                "layers_bytes": image_size(tag) - image_size(B.HEAVY_BASE)}

    B.remove_boxes([host])   # a box left by another stage (other uid) would crash-loop on its kept home volume
    # The warm image: built once, kept alive by a second tag so `docker rmi TAG` only untags it
    # (the classic builder's cache is the image's parent chain: rmi of the last tag deletes it).
    warm = up(uid0)
    keep = f"devbox-bench-keep:{uid0}"
    B.sh("docker", "tag", warm["tag"], keep)
    bed.made_images.add(keep)
    log(f"    warm image {warm['tag']} built once ({warm['up_s']:.1f}s); its layers add {warm['layers_bytes'] / 1e6:.1f} MB")

    # Each round starts from no box and no volumes: a kept home volume owned by the previous
    # uid would make the new box crash-loop (see docs/PERFORMANCE.md), and all rounds stay alike.
    cold = Cmd("devbox up: build on host, cold cache (new uid)", lambda i: up(uid0 + 1 + max(i, 0) * 7 + (i < 0)),
               prep=lambda i: B.remove_boxes([host]))
    warmc = Cmd("devbox up: build on host, warm cache", lambda i: up(uid0),
                prep=lambda i: (B.remove_boxes([host]), B.sh("docker", "rmi", warm["tag"])))

    def save_load(i):
        from bench.delivery import save_into_ssh_load

        return {"bytes_sent": save_into_ssh_load(warm["tag"], ["ssh", "-F", str(bed.ssh_config), "-o", "BatchMode=yes", host])}
    sl = Cmd("docker save IMG, piped into ssh HOST docker load", save_load)
    # cold builds are slow (apt-get inside): fewer rounds of those; warm and save|load get all.
    interleave([cold, warmc, sl], cold_runs, warmup=0, log=log)
    if runs > cold_runs:
        interleave([warmc, sl], runs - cold_runs, warmup=0, log=log)
    sent = max(e["bytes_sent"] for e in cold.extras + warmc.extras)
    layers = min(e["layers_bytes"] for e in cold.extras + warmc.extras)
    sl_bytes = sl.extras[0]["bytes_sent"]
    return {"commands": [c.summary() for c in (cold, warmc, sl)],
            "ratios": [ratio(cold, sl), ratio(warmc, sl)],
            "bytes": {"devbox_sent": sent, "devbox_layers": layers, "save_load_sent": sl_bytes,
                      "heavy_base": image_size(B.HEAVY_BASE)},
            "goals": [goal("devbox bytes sent / its own layers", round(sent / layers, 5), "<= 1.2x", sent / layers <= 1.2),
                      goal("docker save+load bytes / devbox bytes", round(sl_bytes / sent, 1), ">= 10x", sl_bytes / sent >= 10)]}


# ---------------------------------------------------------------- report


def fmt_bytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} KB"


def table(results: dict) -> str:
    lines = ["| stage | command | runs | min s | median s |", "| --- | --- | ---: | ---: | ---: |"]
    for stage, data in results["stages"].items():
        for c in data.get("commands", []):
            lines.append(f"| {stage} | {c['label']} | {c['runs']} | {c['min_s']:.3f} | {c['median_s']:.3f} |")
    lines += ["", "| ratio (A / B) | of medians | pairwise median (min–max) |", "| --- | ---: | ---: |"]
    for data in results["stages"].values():
        for r in data.get("ratios", []):
            lines.append(f"| {r['a']} / {r['b']} | {r['of_medians']:.2f} | {r['pairwise_median']:.2f} ({r['pairwise_min']:.2f}–{r['pairwise_max']:.2f}) |")
    lines += ["", "| goal | measured | target | met | note |", "| --- | ---: | --- | --- | --- |"]
    for data in results["stages"].values():
        for g in data.get("goals", []):
            lines.append(f"| {g['goal']} | {g['measured']} | {g['target']} | {'yes' if g['met'] else '**no**'} | {g.get('note', '')} |")
    extra = []
    for stage, data in results["stages"].items():
        if "error" in data:
            extra.append(f"Stage {stage} FAILED: {data['error'][:300]}")
    if "bytes" in results["stages"].get("delivery", {}):
        b = results["stages"]["delivery"]["bytes"]
        extra.append(f"Delivery bytes: devbox sent {fmt_bytes(b['devbox_sent'])} (its layers: {fmt_bytes(b['devbox_layers'])}); "
                     f"docker save+load sent {fmt_bytes(b['save_load_sent'])} (heavy base {fmt_bytes(b['heavy_base'])}).")
    if "connections" in results["stages"].get("noop", {}):
        extra.append("SSH connections accepted by the host's sshd: " + "; ".join(
            f"{k}: {v}" for k, v in results["stages"]["noop"]["connections"].items()) + ".")
    return "\n".join(lines + ([""] + extra if extra else []))


def run_stage(stage: str, bed: B.Bed, runs: int, args, results: dict) -> None:
    if stage == "startup":
        results["stages"][stage] = stage_startup(bed, runs)
    elif stage == "status":
        results["stages"][stage] = stage_status(bed, runs)
    elif stage == "noop":
        results["stages"][stage] = stage_noop(bed, runs)
    elif stage == "fanout":
        results["stages"][stage] = stage_fanout(bed, runs)
    elif stage == "delivery":
        results["stages"][stage] = stage_delivery(bed, runs, 1 if args.quick else min(runs, 3), args.ballast_mb)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fast smoke: 10 hosts, 2 runs, 1 cold build")
    p.add_argument("--runs", type=int, default=None, help="counted runs per command (default 5; --quick 2)")
    p.add_argument("--hosts", type=int, default=None, help="fake hosts for the status fan-out (default 50; --quick 10)")
    p.add_argument("--only", default=",".join(STAGES), help=f"comma-separated stages of: {', '.join(STAGES)}")
    p.add_argument("--ballast-mb", type=int, default=300, help="incompressible MB in the heavy base (default 300)")
    p.add_argument("--out", type=Path, default=RESULTS / "latest.json", help="JSON results (default bench/results/latest.json)")
    args = p.parse_args(argv)
    runs = args.runs or (2 if args.quick else 5)
    n_hosts = args.hosts or (10 if args.quick else 50)
    stages = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(stages) - set(STAGES)
    if unknown:
        p.error(f"unknown stage(s): {', '.join(sorted(unknown))}")
    if "noop" in stages:
        B.ensure_helper_venvs(log)
    started = time.perf_counter()
    results = {"machine": machine(), "runs": runs, "hosts": n_hosts, "quick": args.quick, "stages": {}}
    bed = B.start(n_hosts if stages != ["startup"] else 1, log)
    try:
        for stage in stages:
            t = time.perf_counter()
            try:
                run_stage(stage, bed, runs, args, results)
            except Exception as exc:  # one broken stage must not lose the others' figures
                log(f"  ! stage {stage} failed: {exc}")
                results["stages"][stage] = {"error": str(exc)[:3000]}
            results["stages"][stage]["stage_seconds"] = round(time.perf_counter() - t, 1)
    finally:
        log("  … cleaning up (boxes, volumes, bench images, sshds)")
        bed.stop()
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    text = table(results)
    m = results["machine"]
    head = f"machine: {m['nproc']} x {m['cpu']}, kernel {m['kernel']}, docker {m['docker']}, {m['openssh']}; {runs} runs; total {results['total_seconds']}s"
    print(head + "\n\n" + text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    args.out.with_suffix(".md").write_text(head + "\n\n" + text + "\n")
    log(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
