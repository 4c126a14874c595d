"""`python -m bench.streamfloor`: issue 26's figure, a streamed `devbox up` against the OpenSSH floor.

The image is bench/bigimage.py's 2.5 GB one (MID_IMAGE plus devbox's own layers, as `docker
save` writes it); the host is a fake host on loopback whose `docker` is a dockerd of its own,
emptied (`system prune -af --volumes`) before every run, so both contenders send everything.
After one uncounted warm-up pair, rounds alternate:

- `devbox up HOST` as a user runs it: connect, gather, stream, create and start the box, pin
  its host key, write the ssh entry and verify (a new box verifies), under bench/phases.py,
  which records where the time went;
- `docker save IMG | ssh HOST docker load` in a shell pipe, the floor.

    nice python -m bench.streamfloor                 # 3 counted pairs (about 6 minutes here)
    nice python -m bench.streamfloor --runs 5 --no-verify
    git worktree add /tmp/main-wt main && nice python -m bench.streamfloor --before /tmp/main-wt   # before/after
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import bigimage
from bench.delivery import HOST, RESULTS, Bed, log
from bench.timing import Cmd, interleave, ratio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import testbed as tb  # noqa: E402


def devbox_up(bed: Bed, traces: list, verify: bool, transport: str = "") -> dict:
    """The whole `devbox up`, its phases traced into `traces`."""
    with tempfile.NamedTemporaryFile(suffix=".json") as trace:
        env = {**bed.env, **({"DEVBOX_STREAM_TRANSPORT": transport} if transport else {})}
        argv = [sys.executable, "-m", "bench.phases", trace.name, "--", "up", HOST, "--repin", "--json",
                *([] if verify else ["--no-verify"])]
        done = subprocess.run(argv, cwd=bed.project, env={**env, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=1800)
        report = json.loads(done.stdout)[0] if done.stdout.startswith("[") else {}
        if done.returncode != 0 or report.get("delivery") != "stream-missing-layers":
            raise RuntimeError(f"devbox up: exit {done.returncode}\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}")
        traces.append(json.loads(Path(trace.name).read_text()))
    return {"bytes_sent": report["bytes_sent"], "transport": report.get("transport", ""),
            "checks": len(report.get("checks", []))}


def devbox_from(bed: Bed, checkout: Path, verify: bool) -> dict:
    """The same `up`, run from another checkout's devbox (e.g. main's: a before/after in one run)."""
    argv = [sys.executable, "-m", "devbox.cli", "up", HOST, "--repin", "--json", *([] if verify else ["--no-verify"])]
    done = subprocess.run(argv, cwd=bed.project, env={**bed.env, "PYTHONPATH": str(checkout)}, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=1800)
    report = json.loads(done.stdout)[0] if done.stdout.startswith("[") else {}
    if done.returncode != 0 or report.get("delivery") != "stream-missing-layers":
        raise RuntimeError(f"devbox up ({checkout}): exit {done.returncode}\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}")
    return {"bytes_sent": report["bytes_sent"], "transport": report.get("transport", "")}


def shell_pipe(bed: Bed, tag: str) -> None:
    ssh = shlex.join(["ssh", "-F", str(bed.laptop.ssh_config), "-o", "BatchMode=yes", HOST, "docker load -q"])
    subprocess.run(["bash", "-o", "pipefail", "-c", f"docker save {shlex.quote(tag)} | {ssh} >/dev/null"],
                   env=bed.env, check=True)


def phases(traces: list[list[dict]]) -> list[dict]:
    """Each phase's median duration and median start over the counted runs."""
    keyed: dict[str, list[dict]] = {}
    for trace in traces:
        seen: dict[str, int] = {}
        for event in trace:
            n = seen[event["what"]] = seen.get(event["what"], 0) + 1
            keyed.setdefault(f"{event['what']} #{n}" if n > 1 else event["what"], []).append(event)
    rows = [{"what": what, "runs": len(events), "start_s": round(statistics.median(e["start"] for e in events), 2),
             "seconds": round(statistics.median(e["end"] - e["start"] for e in events), 2)} for what, events in keyed.items()]
    return sorted(rows, key=lambda r: r["start_s"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.streamfloor", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="counted pairs (default 3; one warm-up pair first)")
    p.add_argument("--no-verify", action="store_true", help="time `up --no-verify` (no verify after the box starts)")
    p.add_argument("--paramiko", action="store_true", help="stream through paramiko (DEVBOX_STREAM_TRANSPORT=paramiko)")
    p.add_argument("--base", default=bigimage.MID_IMAGE, choices=sorted(bigimage.RECIPES))
    p.add_argument("--before", type=Path, help="a third contender: devbox from this checkout (e.g. a worktree of main)")
    p.add_argument("--out", type=Path, default=RESULTS / "streamfloor.json")
    args = p.parse_args(argv)
    reason = tb.testbed_unavailable_reason()
    if reason:
        raise SystemExit(f"bench needs the real test bed: {reason}")
    tag = bigimage.ensure_box_image(tb.BASE_IMAGE, log, args.base)
    size = int(subprocess.run(f"docker save {shlex.quote(tag)} | wc -c", shell=True, capture_output=True, text=True, check=True).stdout)
    log(f"== streamed up vs docker save | ssh docker load: {tag} on {args.base}, {size / 1e9:.2f} GB as saved")
    bed = Bed(args.base)
    traces: list = []
    results: dict = {"image": tag, "base": args.base, "save_bytes": size, "runs": args.runs,
                     "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "load_average": os.getloadavg(),
                     "command": "python -m bench.streamfloor " + " ".join(argv if argv is not None else sys.argv[1:])}
    try:
        label = "devbox up" + (" --no-verify" if args.no_verify else " (creates, starts, pins, verifies)")
        devbox = Cmd(label, lambda i: devbox_up(bed, traces, not args.no_verify, "paramiko" if args.paramiko else ""),
                     prep=lambda i: bed.empty_engine())
        raw = Cmd("docker save IMG | ssh HOST docker load (shell pipe)", lambda i: shell_pipe(bed, tag),
                  prep=lambda i: bed.empty_engine())
        contenders = [devbox, raw]
        if args.before:
            contenders.append(Cmd(f"devbox up from {args.before}", lambda i: devbox_from(bed, args.before, not args.no_verify),
                                  prep=lambda i: bed.empty_engine()))
        interleave(contenders, args.runs, log=log)
    finally:
        bed.stop()
    counted = traces[-args.runs:]
    if args.before:
        results["ratio_before"] = ratio(contenders[2], raw)
    results.update(commands=[c.summary() for c in contenders], ratio=ratio(devbox, raw),
                   pairs=[round(a / b, 3) for a, b in zip(devbox.times, raw.times)], phases=phases(counted), traces=counted,
                   load_average_after=os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    for row in results["phases"]:
        log(f"  {row['start_s']:7.2f}  {row['seconds']:7.2f}  {row['what']}")
    log(json.dumps({k: results[k] for k in ("commands", "ratio", "ratio_before", "pairs") if k in results}, indent=1))
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
