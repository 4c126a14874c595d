"""Long jobs as tmux sessions in the box, with a log and an exit code on the home volume.

Each job owns ~/.devbox/jobs/NAME/: `run.sh` (the exact argv, quoted by shlex.join, so
spaces, quotes, `$` and `;` reach the program untouched), `log`, `started`, and when it
ends `exit_code` and `ended`. tmux keeps it alive across SSH drops; the files keep
its story across box re-creation (a job whose tmux died without an exit code is "lost").
"""
from __future__ import annotations

import re
import shlex
import signal
from dataclasses import dataclass
from datetime import datetime, timezone

from devbox.box import box_sh
from devbox.config import BoxSpec
from devbox.errors import ConfigError, DevboxError
from devbox.remote import Host

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
NAME_RULE = "job names are 1-64 characters of A-Z a-z 0-9 _ . - starting with a letter or digit"
ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
JOBS = "$HOME/.devbox/jobs"
TAKEN_EXIT = 17


def validate_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise ConfigError(f"invalid job name {name!r}", NAME_RULE)
    return name


def run_script(name: str, argv: list[str], cwd: str | None, env: list[str]) -> str:
    """The job's run.sh: cd, env, then argv with output to the pane and the log."""
    if not argv:
        raise ConfigError("no command given", "put the command after --, e.g. devbox run HOST --name train -- python train.py")
    for item in env:
        if not ENV_RE.match(item):
            raise ConfigError(f"bad --env {item!r}", "use --env NAME=VALUE")
    d = f'"{JOBS}/{name}"'
    lines = ["#!/bin/sh", f"d={d}"]
    if cwd:
        lines.append(f"cd {shlex.quote(cwd)} || {{ echo 'devbox: cannot cd to {cwd}' >> \"$d/log\"; echo 1 > \"$d/exit_code\"; exit 1; }}")
    lines += [f"export {shlex.quote(item.split('=', 1)[0])}={shlex.quote(item.split('=', 1)[1])}" for item in env]
    lines += [
        'date -u +%Y-%m-%dT%H:%M:%SZ > "$d/started"',
        f"{{ {shlex.join(argv)}; echo $? > \"$d/exit_code.new\"; }} 2>&1 | tee -a \"$d/log\"",
        'mv -f "$d/exit_code.new" "$d/exit_code"; date -u +%Y-%m-%dT%H:%M:%SZ > "$d/ended"',
    ]
    return "\n".join(lines) + "\n"


def start_job(host: Host, spec: BoxSpec, name: str, argv: list[str], cwd: str | None = None,
              env: list[str] | None = None, replace: bool = False) -> None:
    validate_name(name)
    script = run_script(name, argv, cwd, env or [])
    q = shlex.quote(name)
    setup = (
        f'd="{JOBS}/"{q}; umask 077; '
        f"if tmux has-session -t ={q} 2>/dev/null; then "
        + (f"tmux kill-session -t ={q}; " if replace else f"exit {TAKEN_EXIT}; ")
        + "fi; "
        f'rm -rf "$d"; mkdir -p "$d" && cat > "$d/run.sh" && printf "%s\\n" {shlex.quote(shlex.join(argv))} > "$d/command" && '
        f'tmux new-session -d -s {q} -x 200 -y 50 "sh $d/run.sh"'
    )
    result = box_sh(host, spec, setup, stdin=script.encode(), check=False)
    if result.exit_code == TAKEN_EXIT:
        raise ConfigError(f"a job named {name!r} is already running on {spec.host}", "pick another --name, or pass --replace to stop it first")
    if not result.ok:
        raise DevboxError(f"{spec.host}: could not start job {name!r}: {result.stderr.strip()[:200]}", f"check `devbox status {spec.host}`")


@dataclass
class Job:
    name: str
    state: str             # running, exited N, lost
    started: str = ""
    duration_s: int | None = None
    last_line: str = ""
    command: str = ""

    def as_dict(self) -> dict:
        return dict(self.__dict__)


# One line per job, tab-separated: name, tmux alive, exit code, started, ended, command, last log line.
LIST_JOBS = (
    f'cd "{JOBS}" 2>/dev/null || exit 0; for n in *; do [ -d "$n" ] || continue; '
    'alive=no; tmux has-session -t "=$n" 2>/dev/null && alive=yes; '
    'code=$(cat "$n/exit_code" 2>/dev/null); st=$(cat "$n/started" 2>/dev/null); en=$(cat "$n/ended" 2>/dev/null); '
    'cmd=$(head -c 300 "$n/command" 2>/dev/null | head -n 1); '
    'last=$(tail -n 1 "$n/log" 2>/dev/null | tr -d "\\r\\t" | cut -c1-200); '
    'printf "%s\\t%s\\t%s\\t%s\\t%s\\t%s\\t%s\\n" "$n" "$alive" "$code" "$st" "$en" "$cmd" "$last"; done'
)


def parse_jobs(text: str, now: datetime | None = None) -> list[Job]:
    """Pure: LIST_JOBS output -> Jobs with their state and duration."""
    now = now or datetime.now(timezone.utc)
    jobs = []
    for line in text.splitlines():
        parts = (line.split("\t") + [""] * 7)[:7]
        name, alive, code, started, ended, command, last = parts
        if not name:
            continue
        state = "running" if alive == "yes" else (f"exited {code}" if code.strip() else "lost")
        jobs.append(Job(name, state, started, _duration(started, ended if alive != "yes" else "", now), last, command))
    return jobs


def _duration(started: str, ended: str, now: datetime) -> int | None:
    try:
        start = datetime.fromisoformat(started.replace("Z", "+00:00"))
        end = datetime.fromisoformat(ended.replace("Z", "+00:00")) if ended else now
    except ValueError:
        return None
    return int((end - start).total_seconds())


def list_jobs(host: Host, spec: BoxSpec) -> list[Job]:
    return parse_jobs(box_sh(host, spec, LIST_JOBS).stdout)


def _require_job(host: Host, spec: BoxSpec, name: str) -> None:
    validate_name(name)
    if not box_sh(host, spec, f'[ -d "{JOBS}/"{shlex.quote(name)} ]', check=False).ok:
        known = ", ".join(j.name for j in list_jobs(host, spec)) or "none"
        raise ConfigError(f"no job named {name!r} on {spec.host}", f"known jobs: {known}")


def logs(host: Host, spec: BoxSpec, name: str, tail: int = 100, follow: bool = False, write=print) -> None:
    """Print the log; with follow, stream until the job ends (or Ctrl-C)."""
    _require_job(host, spec, name)
    q = shlex.quote(name)
    log = f'"{JOBS}/"{q}/log'
    if not follow:
        write(box_sh(host, spec, f"tail -n {int(tail)} {log}").stdout, end="")
        return
    # tail --pid ends the stream once the job's pane process exits.
    script = (f'pid=$(tmux display-message -p -t ={q} "#{{pane_pid}}" 2>/dev/null); '
              f'if [ -n "$pid" ]; then exec tail -n {int(tail)} -F --pid="$pid" {log} 2>/dev/null; else exec tail -n {int(tail)} {log}; fi')
    box_sh(host, spec, script, timeout=None, on_stdout=lambda chunk: write(chunk.decode(errors="replace"), end="", flush=True))


def stop_job(host: Host, spec: BoxSpec, name: str, sig: str = "TERM", wait_s: int = 10) -> Job:
    """Signal the job's whole process group; record 128+N when it could not record itself."""
    _require_job(host, spec, name)
    try:
        number = signal.Signals["SIG" + sig.upper().removeprefix("SIG")].value
    except KeyError:
        raise ConfigError(f"unknown signal {sig!r}", "use a name like TERM, INT, KILL") from None
    q = shlex.quote(name)
    script = (
        f'd="{JOBS}/"{q}; pid=$(tmux display-message -p -t ={q} "#{{pane_pid}}" 2>/dev/null) || exit 0; '
        f"kill -{number} -- -$pid 2>/dev/null || kill -{number} $pid; "
        f'i=0; while tmux has-session -t ={q} 2>/dev/null && [ $i -lt {wait_s * 5} ]; do sleep 0.2; i=$((i+1)); done; '
        f"tmux kill-session -t ={q} 2>/dev/null; "
        f'[ -s "$d/exit_code" ] || {{ echo {128 + number} > "$d/exit_code"; date -u +%Y-%m-%dT%H:%M:%SZ > "$d/ended"; }}; '
        f'echo "devbox: stopped with SIG{sig.upper().removeprefix("SIG")}" >> "$d/log"'
    )
    box_sh(host, spec, script)
    return next(j for j in list_jobs(host, spec) if j.name == name)
