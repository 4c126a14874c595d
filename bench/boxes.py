"""`python -m bench.boxes`: a box per person on one shared host (issue 20's figures).

On the bench bed (one fake host, the shared dockerd, the image already built there):
the first named box's `up`, then a second box's `up` on the same host (the image is there:
volumes, network, keys, the box and its verify), then `devbox status HOST` with 8 boxes on
it (one exchange for the host's own box, one listing every box with its watcher's word),
each timed over several runs, side by side with one `ssh HOST docker ps` as the floor.

    python -m bench.boxes            # 3 runs of status; prints a table and writes JSON
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from bench import bed as B
from statistics import median

tb = B.tb
RESULTS = B.BENCH / "results"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def timed(run) -> float:
    began = time.monotonic()
    run()
    return time.monotonic() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--boxes", type=int, default=8)
    args = parser.parse_args()
    bed = B.start(1, log)
    host = bed.hosts[0]
    try:
        names = [f"p{i}-box{B.SUFFIX}" for i in range(args.boxes)]
        bed.devbox("keys", "add", "me", f"{bed.laptop.identity}.pub")
        tables = "".join(f'[boxes.{n}]\nhost = "{host}"\nowner = "me"\nidle_stop = "2h"\n' for n in names)
        (bed.project / "devbox.toml").write_text(f'admins = ["me"]\n[defaults]\nplaybook = "cpu"\nbase_image = "{tb.BASE_IMAGE}"\n'
                                                 + tables)
        bed.devbox("build", "--base", tb.BASE_IMAGE)
        first = timed(lambda: bed.devbox("up", names[0]))
        second = timed(lambda: bed.devbox("up", names[1]))
        log(f"  first box up {first:.2f} s, second box up {second:.2f} s")
        for name in names[2:]:
            bed.devbox("up", name, "--no-verify")
        noop = [timed(lambda: bed.devbox("up", names[1])) for _ in range(args.runs)]
        status = [timed(lambda: bed.devbox("status", host)) for _ in range(args.runs)]
        floor = [timed(lambda: bed.ssh(host, "docker", "ps")) for _ in range(args.runs)]
        rows = json.loads(bed.devbox("status", host, "--json").stdout)
        result = {"first_box_up_s": round(first, 2), "second_box_up_s": round(second, 2),
                  "noop_up_s": [round(x, 2) for x in noop], "status_s": [round(x, 2) for x in status],
                  "ssh_docker_ps_s": [round(x, 2) for x in floor], "rows": len(rows),
                  "status_median_over_floor": round(median(status) / median(floor), 2)}
        print(json.dumps(result, indent=2))
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "boxes.json").write_text(json.dumps(result, indent=2))
    finally:
        bed.stop()


if __name__ == "__main__":
    main()
