"""`python -m bench.profile`: where a no-op `devbox up` spends its time.

Starts a one-host bed, brings the box up, then runs pyinstrument (from the bench's own
venv, over this venv's packages) on `devbox up HOST --no-verify` and `devbox up HOST --verify`,
plus `-X importtime` on the import of devbox.cli and the phases of the remote side
(each command of the state script, what a no-op up sends, timed on the host). Writes bench/results/profile-*.txt.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

from bench import bed as B

OUT = B.BENCH / "results"


def main() -> int:
    B.ensure_helper_venvs()
    OUT.mkdir(parents=True, exist_ok=True)
    bed = B.start(1)
    host = bed.hosts[0]
    try:
        bed.devbox("up", host, "--json")
        site = next((B.REPO / ".venv" / "lib").glob("python3*/site-packages"))
        env = {**bed.env, "PYTHONPATH": f"{B.REPO}:{site}"}
        for name, extra in (("noverify", ["--no-verify"]), ("verify", ["--verify"])):
            out = OUT / f"profile-up-{name}.txt"
            subprocess.run([str(B.ANSIBLE_VENV / "bin" / "python"), "-m", "pyinstrument", "--show-all", "-o", str(out),
                            "-m", "devbox.cli", "up", host, *extra], cwd=bed.project, env=env, check=True,
                           capture_output=True)
            print(f"wrote {out}")
        imp = subprocess.run([sys.executable, "-X", "importtime", "-c", "import devbox.cli, devbox.commands.up"],
                             capture_output=True, text=True, env=bed.env)
        rows = sorted((l.split("|") for l in imp.stderr.splitlines()[1:] if l.count("|") == 2),
                      key=lambda r: -int(r[1]))[:25]
        (OUT / "profile-imports.txt").write_text("cumulative us | module\n" + "".join(f"{r[1].strip():>10} | {r[2]}\n" for r in rows))
        print(f"wrote {OUT / 'profile-imports.txt'}")
        # The remote side: time each section of the state script on the host itself.
        sys.path.insert(0, str(B.REPO))
        os.environ["HOME"] = str(bed.laptop.home)
        os.chdir(bed.project)
        from devbox.config import load_spec
        from devbox.facts import state_script
        from devbox.image import content_tag
        spec = load_spec(host)
        script = state_script(spec, content_tag(spec.image))  # what a no-op up sends
        timed = script.replace("sec() { echo;", "sec() { echo \"T $(date +%s%N)\" >&2; echo;")
        t = time.perf_counter()
        done = bed.ssh(host, "bash -c " + _quote(timed + 'echo "T $(date +%s%N)" >&2\n'))
        total = time.perf_counter() - t
        stamps = [int(l.split()[1]) for l in done.stderr.splitlines() if l.startswith("T ")]
        names = [l.split(";")[0].split()[-1] for l in script.splitlines() if l.lstrip().startswith("sec ")]
        lines = [f"gather over ssh: {total:.3f}s wall (incl. OpenSSH connect)"]
        for name, a, b in zip(names, stamps, stamps[1:]):
            lines.append(f"  {name:<10} {(b - a) / 1e6:8.1f} ms")
        (OUT / "profile-gather.txt").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
    finally:
        bed.stop()
    return 0


def _quote(text: str) -> str:
    import shlex
    return shlex.quote(text)


if __name__ == "__main__":
    sys.exit(main())
