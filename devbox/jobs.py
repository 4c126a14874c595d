"""Long jobs as tmux sessions in the box, with a log and an exit code on the home volume.

Each job owns ~/.devbox/jobs/NAME/: `run.sh` (the exact argv, quoted by shlex.join and
handed to `exec "$@"`, so spaces, quotes, `$` and `;` reach the program untouched),
`command`, `started`, `pid` (the program's), `log`, and when it ends `exit_code` and
`ended`. tmux keeps it alive across SSH drops; the files keep its story across box
re-creation (a job whose tmux died without an exit code is "lost").
"""
from __future__ import annotations

import codecs
import re
import shlex
import signal
from dataclasses import dataclass
from datetime import datetime, timezone

from devbox.box import box_sh
from devbox.boxenv import ENV_SCRIPT
from devbox.config import BoxSpec
from devbox.errors import ConfigError, DevboxError
from devbox.remote import Host

# No "." or ":": tmux silently turns them into "_" in session names, so a job named
# "a.b" would run as session "a_b" and read as lost at once.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
NAME_RULE = "job names are 1-64 characters of A-Z a-z 0-9 _ - starting with a letter or digit"
ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
JOBS = "$HOME/.devbox/jobs"
TAKEN_EXIT = 17
NO_CWD_EXIT = 18
LOST_EXIT = 19
NOW = "date -u +%Y-%m-%dT%H:%M:%SZ"


def validate_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise ConfigError(f"invalid job name {name!r}", NAME_RULE)
    return name


def _job_dir(name: str) -> str:
    return f'"{JOBS}/{validate_name(name)}"'


def _shell_path(path: str) -> str:
    """A path for sh, with a leading ~ meaning the box user's home (quoted ~ would not expand)."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def _require_utf8(what: str, items: list[str]) -> None:
    """Bytes that are not UTF-8 reach Python as lone surrogates; SSH carries only UTF-8 text."""
    for item in items:
        try:
            item.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(f"{what} {ascii(item)} is not valid UTF-8", "pass UTF-8 text; put binary data in a file in the box") from None


def run_script(name: str, argv: list[str], cwd: str | None, env: list[str]) -> str:
    """The job's run.sh: cd, env, then exec argv with output to the pane and the log.

    The program runs as `sh -c 'echo $$ > pid; exec "$@"' ARGV`: it keeps the pid that
    was written (so `stop` can signal it alone, letting it clean up while the log keeps
    recording) and gets its arguments as "$@", never re-parsed by a shell.
    """
    if not argv:
        raise ConfigError("no command given", "put the command after --, e.g. devbox run HOST --name train -- python train.py")
    _require_utf8("argument", argv)
    _require_utf8("--env value", env)
    _require_utf8("--cwd", [cwd or ""])
    for item in env:
        if not ENV_RE.match(item):
            raise ConfigError(f"bad --env {item!r}", "use --env NAME=VALUE (NAME: letters, digits, _)")
    where = _shell_path(cwd or "~")
    lines = [
        "#!/bin/sh",
        f"d={_job_dir(name)}",
        f'cd {where} || {{ echo "devbox: cannot cd to "{where} >> "$d/log"; echo 1 > "$d/exit_code"; {NOW} > "$d/ended"; exit 1; }}',
    ]
    lines.append(f"[ -r {ENV_SCRIPT} ] && . {ENV_SCRIPT}")   # devbox.toml's env and secrets (--env wins)
    lines += [f"export {item.split('=', 1)[0]}={shlex.quote(item.split('=', 1)[1])}" for item in env]
    lines += [
        f"{{ sh -c 'echo $$ > \"$0\"; exec \"$@\"' \"$d/pid\" {shlex.join(argv)}; echo $? > \"$d/exit_code.new\"; }} 2>&1 | tee -a \"$d/log\"",
        f'mv -f "$d/exit_code.new" "$d/exit_code"; {NOW} > "$d/ended"',
    ]
    return "\n".join(lines) + "\n"


def start_job(host: Host, spec: BoxSpec, name: str, argv: list[str], cwd: str | None = None,
              env: list[str] | None = None, replace: bool = False) -> None:
    validate_name(name)
    script = run_script(name, argv, cwd, env or [])
    if replace:
        stop_job(host, spec, name, missing_ok=True)
    q = shlex.quote(name)
    # A lost job (its tmux gone, no exit code) has only its log to tell what happened: kept
    # unless --replace says to start afresh.
    lost_check = "" if replace else f'if [ -d "$d" ] && [ ! -s "$d/exit_code" ]; then exit {LOST_EXIT}; fi; '
    setup = (
        f"d={_job_dir(name)}; umask 077; "
        f"if tmux has-session -t ={q} 2>/dev/null; then exit {TAKEN_EXIT}; fi; {lost_check}"
        f"[ -d {_shell_path(cwd or '~')} ] || exit {NO_CWD_EXIT}; "
        f'rm -rf "$d"; mkdir -p "$d" && cat > "$d/run.sh" && printf "%s\\n" {shlex.quote(shlex.join(argv))} > "$d/command" && '
        f'{NOW} > "$d/started" && : > "$d/log" && '
        f'tmux new-session -d -s {q} -x 200 -y 50 "exec sh \'$d/run.sh\'"'
    )
    result = box_sh(host, spec, setup, stdin=script.encode(), check=False)
    if result.exit_code == TAKEN_EXIT:
        raise ConfigError(f"a job named {name!r} is already running on {spec.box.name}", "pick another --name, or pass --replace to stop it first")
    if result.exit_code == LOST_EXIT:
        raise ConfigError(f"job {name!r} on {spec.box.name} was lost (its tmux ended without an exit code) and its log is kept",
                          f"read it with `devbox logs {spec.box.name} {name}`, then pick another --name, or pass --replace to discard it")
    if result.exit_code == NO_CWD_EXIT:
        raise ConfigError(f"--cwd {cwd!r}: no such directory in the box on {spec.box.name}", "create it first (devbox ssh HOST -- mkdir -p DIR) or pick another")
    if not result.ok:
        raise DevboxError(f"{spec.box.name}: could not start job {name!r}: {result.stderr.strip()[:200]}", f"check `devbox status {spec.box.name}`")


@dataclass
class Job:
    name: str
    state: str             # running, exited N, lost
    started: str = ""
    duration_s: int | None = None
    last_line: str = ""
    command: str = ""

    HEADER = f"{'NAME':<20} {'STATE':<10} {'STARTED':<21} {'TIME':>7}  LAST LINE"

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def text(self) -> str:
        from devbox.result import duration

        return f"{self.name:<20} {self.state:<10} {self.started:<21} {duration(self.duration_s):>7}  {self.last_line}"


# One line per job, tab-separated: name, tmux alive, exit code, started, ended, command,
# last log line (the text after a progress bar's last \r; blank lines skipped).
LIST_JOBS = (
    f'cd "{JOBS}" 2>/dev/null || exit 0; for n in *; do [ -d "$n" ] || continue; '
    'alive=no; tmux has-session -t "=$n" 2>/dev/null && alive=yes; '
    'code=$(cat "$n/exit_code" 2>/dev/null); st=$(cat "$n/started" 2>/dev/null); en=$(cat "$n/ended" 2>/dev/null); '
    'cmd=$(head -c 300 "$n/command" 2>/dev/null | head -n 1 | tr "\\t" " "); '
    'last=$(tail -c 4096 "$n/log" 2>/dev/null | tr "\\r\\t" "\\n " | grep -v "^ *$" | tail -n 1 | cut -c1-200); '
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
        state = "running" if alive == "yes" else (f"exited {code.strip()}" if code.strip() else "lost")
        # A lost job has no end time: its duration is unknown, not "until now".
        end = ended if alive != "yes" else ""
        duration = None if state == "lost" and not ended else _duration(started, end, now)
        jobs.append(Job(name, state, started, duration, last, command))
    return jobs


def _duration(started: str, ended: str, now: datetime) -> int | None:
    try:
        start = datetime.fromisoformat(started.replace("Z", "+00:00"))
        end = datetime.fromisoformat(ended.replace("Z", "+00:00")) if ended else now
    except ValueError:
        return None
    return max(0, int((end - start).total_seconds()))


def list_jobs(host: Host, spec: BoxSpec) -> list[Job]:
    return parse_jobs(box_sh(host, spec, LIST_JOBS).stdout)


def _require_job(host: Host, spec: BoxSpec, name: str) -> None:
    if not box_sh(host, spec, f"[ -d {_job_dir(name)} ]", check=False).ok:
        known = ", ".join(j.name for j in list_jobs(host, spec)) or "none"
        raise ConfigError(f"no job named {name!r} on {spec.box.name}", f"known jobs: {known}")


def _printer(write):
    """on_stdout for a log: each chunk decoded and written as it comes (a character split
    across two chunks is kept for the next), so no more than a chunk is ever held here."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    return lambda chunk: write(decoder.decode(chunk), end="", flush=True)


def logs(host: Host, spec: BoxSpec, name: str, tail: int = 100, follow: bool = False, write=print) -> None:
    """Print the log; with follow, stream until the job ends (or Ctrl-C).

    Both stream: memory stays within the SSH window (2 MiB) plus a 64 KiB chunk and the
    64 KiB tail Host.run keeps, whatever the log's size (tests/test_logs_memory.py measures it)."""
    _require_job(host, spec, name)
    q = shlex.quote(name)
    log = f"{_job_dir(name)}/log"
    if not follow:
        box_sh(host, spec, f"tail -n {max(0, int(tail))} {log}", timeout=None, on_stdout=_printer(write))
        return
    # tail --pid ends the stream (after printing what is left) once the job's pane process
    # exits. The watcher ends it when devbox goes away (Ctrl-C, dropped link): our stdin,
    # forwarded by `docker exec -i`, reaches EOF then, and no tail is left in the box.
    n = max(0, int(tail))
    script = (f'pid=$(tmux display-message -p -t ={q}: "#{{pane_pid}}" 2>/dev/null); '
              f'if [ -z "$pid" ]; then exec tail -n {n} {log}; fi; '
              f'tail -n {n} -s 0.5 -F --pid="$pid" {log} 2>/dev/null & t=$!; '
              # a background job's stdin is /dev/null in sh: hand it ours as fd 3
              'exec 3<&0; (cat <&3 >/dev/null; kill "$t" 2>/dev/null) & w=$!; '
              'wait "$t"; kill "$w" 2>/dev/null; exit 0')
    box_sh(host, spec, script, timeout=None, keep_stdin_open=True, on_stdout=_printer(write))


def attach_script(host: str, name: str, read_only: bool) -> str:
    """What `attach` runs in the box: tmux attach when the job's session is there, else one
    line saying why it is not (ended, lost, unknown) and what to run instead."""
    q, h = shlex.quote(name), shlex.quote(host)
    logs_hint = 'read its log: devbox logs "$h" "$n"'
    return (
        f"n={q}; h={h}; d={_job_dir(name)}; "
        f'if tmux has-session -t "=$n" 2>/dev/null; then exec tmux attach-session{" -r" if read_only else ""} -t "=$n"; fi; '
        f'if [ -s "$d/exit_code" ]; then echo "devbox: job $n has ended (exit $(cat "$d/exit_code")): {logs_hint}" >&2; '
        f'elif [ -d "$d" ]; then echo "devbox: job $n is lost: its tmux session is gone (the box was re-created or tmux '
        f'was killed) and it left no exit code; {logs_hint}, start it again with devbox run --replace" >&2; '
        f'else echo "devbox: no job named $n in the box on $h (devbox ps $h lists them)" >&2; fi; exit 1'
    )


def signal_number(sig: str) -> tuple[int, str]:
    """'TERM', 'SIGTERM', 'term' or '15' -> (15, 'SIGTERM')."""
    text = sig.strip().upper()
    try:
        s = signal.Signals(int(text)) if text.isdigit() else signal.Signals["SIG" + text.removeprefix("SIG")]
    except (KeyError, ValueError):
        raise ConfigError(f"unknown signal {sig!r}", "use a name like TERM, INT, HUP, KILL") from None
    return s.value, s.name


def stop_job(host: Host, spec: BoxSpec, name: str, sig: str = "TERM", wait_s: int = 10, missing_ok: bool = False) -> Job | None:
    """Signal the job's program and wait for it to end; KILL the whole job after wait_s.

    The program alone gets the signal (as from `kill`), so it can clean up while tee keeps
    logging and run.sh records its real exit code (143 for an unhandled TERM). When it
    could not record one (killed after wait_s), 128+N of the signal that ended it is.
    """
    number, signame = signal_number(sig)
    if missing_ok:
        validate_name(name)
    else:
        _require_job(host, spec, name)
    q = shlex.quote(name)
    script = (
        f"d={_job_dir(name)}; tmux has-session -t ={q} 2>/dev/null || exit 0; "
        f'pane=$(tmux display-message -p -t ={q}: "#{{pane_pid}}" 2>/dev/null); pid=$(cat "$d/pid" 2>/dev/null); '
        f'echo "devbox: stop: sending {signame}" >> "$d/log"; '
        f'if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -{number} "$pid"; '
        f'elif [ -n "$pane" ]; then kill -{number} -- "-$pane" 2>/dev/null || kill -{number} "$pane"; fi; '
        f"i=0; while tmux has-session -t ={q} 2>/dev/null && [ $i -lt {int(wait_s * 10)} ]; do sleep 0.1; i=$((i+1)); done; "
        f"code={128 + number}; "
        f"if tmux has-session -t ={q} 2>/dev/null; then code=137; "
        f'echo "devbox: stop: still running after {wait_s} s, sending SIGKILL" >> "$d/log"; '
        f'[ -n "$pane" ] && kill -9 -- "-$pane" 2>/dev/null; tmux kill-session -t ={q} 2>/dev/null; sleep 0.2; fi; '
        f'[ -s "$d/exit_code" ] || {{ echo $code > "$d/exit_code"; {NOW} > "$d/ended"; }}; '
        f'echo "devbox: stopped ({signame}), exit code $(cat "$d/exit_code")" >> "$d/log"'
    )
    box_sh(host, spec, script, timeout=wait_s + 60)
    return next((j for j in list_jobs(host, spec) if j.name == name), None)
