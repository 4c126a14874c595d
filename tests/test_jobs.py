"""Long jobs in the box (issue 5), end to end on the real test bed.

Every test drives the real `devbox` CLI on the laptop; the box is a real container
behind a real sshd. The box image is Debian minbase: sh, coreutils and tmux, no python.
"""
from __future__ import annotations

import calendar
import os
import queue
import re
import select
import shlex
import signal
import subprocess
import sys
import threading
import time

import pytest

from devbox.jobs import parse_jobs, run_script, signal_number, validate_name
from devbox.errors import ConfigError

# A job that prints "tick N" about three times a second, forever.
TICKER = ["sh", "-c", 'i=0; while :; do i=$((i+1)); echo "tick $i"; sleep 0.3; done']
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def wait_until(check, timeout: float = 15, interval: float = 0.3, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last value {value!r}")
        time.sleep(interval)


class Jobs:
    """The laptop's job commands for host1, with the box already up."""

    def __init__(self, laptop):
        self.laptop, self.host = laptop, laptop.host1
        self.box = f"devbox-{laptop.host1}"

    def run(self, name: str, argv: list[str], *opts: str, expect: int | None = 0) -> subprocess.CompletedProcess:
        done = self.laptop.devbox("run", self.host, "--name", name, *opts, "--", *argv, timeout=60)
        if expect is not None:
            assert done.returncode == expect, f"exit {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}"
        return done

    def ps(self) -> dict[str, dict]:
        jobs, _ = self.laptop.devbox.json("ps", self.host)
        return {j["name"]: j for j in jobs}

    def job(self, name: str) -> dict:
        return self.ps()[name]

    def state(self, name: str) -> str:
        return self.job(name)["state"]

    def wait_ended(self, *names: str, timeout: float = 15) -> dict[str, dict]:
        """Wait (cheaply, over plain ssh) until the jobs have an exit code; then `devbox ps`."""
        check = f"cd ~/.devbox/jobs && for n in {' '.join(names)}; do [ -s $n/ended ] && ! tmux has-session -t =$n 2>/dev/null || exit 1; done"
        wait_until(lambda: self.laptop.ssh(self.box, check).returncode == 0,
                   timeout, interval=0.2, what=f"{names} to end")
        return self.ps()

    def wait_state(self, name: str, state: str, timeout: float = 15) -> dict:
        job = self.wait_ended(name, timeout=timeout)[name]
        assert job["state"] == state, job
        return job

    def log(self, name: str, *opts: str) -> str:
        done = self.laptop.devbox("logs", self.host, name, *opts, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def ticks(self, name: str) -> list[int]:
        return [int(m) for m in re.findall(r"^tick (\d+)$", self.log(name, "--tail", "100000"), re.M)]


@pytest.fixture
def jobs(laptop):
    reports, _ = laptop.devbox.json("up", laptop.host1)
    assert reports[0]["error"] == ""
    return Jobs(laptop)


# ---------------------------------------------------------------- surviving


def test_job_survives_the_ssh_connection_that_started_it(jobs):
    started = time.time()
    done = jobs.run("ticker", TICKER)
    # `devbox run` has exited: its process, and with it its one SSH connection, are gone.
    assert "devbox logs" in done.stdout and done.returncode == 0
    time.sleep(0.6)
    job = jobs.job("ticker")
    assert job["state"] == "running"
    assert ISO.match(job["started"]), job
    assert abs(calendar.timegm(time.strptime(job["started"], "%Y-%m-%dT%H:%M:%SZ")) - started) < 30
    assert job["duration_s"] is not None and 0 <= job["duration_s"] < 30
    assert re.match(r"^tick \d+$", job["last_line"]), job
    assert job["command"].startswith("sh -c "), job
    first = jobs.ticks("ticker")
    time.sleep(1.2)
    later = jobs.ticks("ticker")
    assert first and later[-1] > first[-1] + 2, (first[-3:], later[-3:])
    assert later == list(range(1, len(later) + 1)), "the log has every line, in order"
    assert jobs.state("ticker") == "running"
    pane = jobs.laptop.ssh(jobs.box, "tmux capture-pane -p -t =ticker:")
    assert re.search(r"^tick \d+$", pane.stdout, re.M), ("the output also goes to the tmux pane", pane)


# ---------------------------------------------------------------- logs


def test_logs_follow_receives_lines_as_printed_and_returns_when_the_job_ends(jobs):
    # The job prints one line, then waits for the test's go-ahead: so line 1 must have
    # reached `logs -f` while the job was still running, and the rest arrive later.
    script = ('echo "line 1"; while [ ! -e "$HOME/go" ]; do sleep 0.1; done; '
              'for i in 2 3 4; do echo "line $i"; sleep 0.3; done; echo done')
    jobs.run("follow", ["sh", "-c", script])
    proc = subprocess.Popen([sys.executable, "-m", "devbox.cli", "logs", jobs.host, "follow", "-f"],
                            cwd=jobs.laptop.devbox.cwd, env=jobs.laptop.devbox.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()

    def reader():
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=reader, daemon=True).start()
    try:
        assert lines.get(timeout=20) == "line 1"
        time.sleep(0.5)
        assert proc.poll() is None and lines.empty(), "follow waits for more while the job runs"
        assert jobs.laptop.ssh(jobs.box, "touch ~/go").returncode == 0
        rest = []
        while (line := lines.get(timeout=20)) is not None:
            rest.append(line)
        assert rest == ["line 2", "line 3", "line 4", "done"], rest
        assert proc.wait(timeout=10) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert jobs.state("follow") == "exited 0"


def test_logs_of_a_finished_job_print_its_tail_with_or_without_follow(jobs):
    jobs.run("tail", ["sh", "-c", "for i in 1 2 3 4 5; do echo n$i; done"])
    jobs.wait_state("tail", "exited 0")
    assert jobs.log("tail", "--tail", "2") == "n4\nn5\n"
    assert jobs.log("tail") == "n1\nn2\nn3\nn4\nn5\n"
    done = jobs.laptop.devbox("logs", jobs.host, "tail", "-f", "--tail", "1", timeout=20)
    assert done.returncode == 0 and done.stdout == "n5\n", "follow returns at once when the job is over"
    r = jobs.laptop.ssh(jobs.box, "cd ~/.devbox/jobs/tail && cat log exit_code command")
    assert r.stdout.splitlines() == ["n1", "n2", "n3", "n4", "n5", "0", "sh -c 'for i in 1 2 3 4 5; do echo n$i; done'"], r
    done = jobs.laptop.devbox("logs", jobs.host, "nosuch")
    assert done.returncode == 2 and "no job named 'nosuch'" in done.stderr and "known jobs: tail" in done.stderr, done


# ---------------------------------------------------------------- exit codes, stop


def test_failing_command_records_its_exit_code(jobs):
    jobs.run("fails", ["sh", "-c", "echo about to fail; exit 3"])
    jobs.run("nosuch", ["no-such-program-xyz"])
    ended = jobs.wait_ended("fails", "nosuch")
    assert ended["nosuch"]["state"] == "exited 127", ended
    job = ended["fails"]
    assert job["state"] == "exited 3", job
    assert job["last_line"] == "about to fail"
    assert job["duration_s"] is not None and job["duration_s"] < 30
    text = jobs.laptop.devbox("ps", jobs.host).stdout
    assert re.search(r"^fails\s+exited 3\s", text, re.M), text


def test_stop_records_how_the_job_ended_exited_143_for_term(jobs):
    jobs.run("victim", TICKER)
    jobs.run("killed", ["sleep", "600"])
    time.sleep(0.5)
    job, done = jobs.laptop.devbox.json("stop", jobs.host, "victim")
    assert job["state"] == "exited 143", done
    assert jobs.state("victim") == "exited 143"
    assert "devbox: stopped (SIGTERM)" in jobs.log("victim")
    alive = jobs.laptop.ssh(jobs.box, "tmux has-session -t =victim")
    assert alive.returncode != 0, "the tmux session is gone"
    job, done = jobs.laptop.devbox.json("stop", jobs.host, "killed", "--signal", "KILL")
    assert job["state"] == "exited 137", done
    done = jobs.laptop.devbox("stop", jobs.host, "killed", "--signal", "NOPE")
    assert done.returncode == 2 and "unknown signal" in done.stderr




def test_stop_lets_the_program_handle_the_signal_and_records_its_own_exit_code(jobs):
    handler = 'trap "echo cleaning up; exit 0" TERM; echo ready; while :; do sleep 0.2; done'
    jobs.run("graceful", ["sh", "-c", handler])
    wait_until(lambda: "ready" in jobs.laptop.ssh(jobs.box, "cat ~/.devbox/jobs/graceful/log").stdout, what="the trap to be set")
    job, done = jobs.laptop.devbox.json("stop", jobs.host, "graceful")
    assert job["state"] == "exited 0", done
    assert "cleaning up" in jobs.log("graceful"), "tee kept logging while the program cleaned up"


def test_stop_kills_a_job_that_ignores_the_signal_after_the_wait(jobs):
    # In process (the CLI waits 10 s): same code, a 1 s wait.
    from devbox.config import load_spec
    from devbox.jobs import stop_job
    from devbox.remote import Host

    jobs.run("stubborn", ["sh", "-c", 'trap "" TERM; echo ready; while :; do sleep 0.2; done'])
    wait_until(lambda: "ready" in jobs.laptop.ssh(jobs.box, "cat ~/.devbox/jobs/stubborn/log").stdout, what="the trap to be set")
    with Host(jobs.host) as host:
        job = stop_job(host, load_spec(jobs.host, None, None), "stubborn", "TERM", wait_s=1)
    assert job.state == "exited 137", job
    assert "sending SIGKILL" in jobs.log("stubborn")
    left = jobs.laptop.ssh(jobs.box, "tmux has-session -t =stubborn")
    assert left.returncode != 0


# ---------------------------------------------------------------- box re-creation


def test_ps_after_a_noop_up_still_shows_the_job_running(jobs):
    jobs.run("steady", TICKER)
    reports, _ = jobs.laptop.devbox.json("up", jobs.host)
    assert reports[0]["error"] == "" and not reports[0]["changed"], reports
    assert jobs.state("steady") == "running"
    before = jobs.ticks("steady")[-1]
    time.sleep(1)
    assert jobs.ticks("steady")[-1] > before


def _change_spec(laptop) -> None:
    toml = laptop.work / "devbox.toml"
    text = toml.read_text()
    assert 'playbook = "cpu"' in text and "base_image" in text
    toml.write_text(text.replace("[defaults]\n", '[defaults]\nshm_size = "1g"\n', 1))


def test_up_on_a_changed_spec_refuses_while_a_job_runs_and_names_it(jobs):
    jobs.run("precious", TICKER)
    _change_spec(jobs.laptop)
    done = jobs.laptop.devbox("up", jobs.host)
    assert done.returncode != 0, done
    assert "precious" in done.stdout + done.stderr and "--force" in done.stdout + done.stderr, done
    assert jobs.state("precious") == "running", "the refused up left the job alone"


def test_forced_recreation_marks_the_job_lost_and_keeps_its_log(jobs):
    jobs.run("doomed", TICKER)
    wait_until(lambda: "tick 2" in jobs.laptop.ssh(jobs.box, "cat ~/.devbox/jobs/doomed/log").stdout, what="some ticks")
    _change_spec(jobs.laptop)
    reports, done = jobs.laptop.devbox.json("up", jobs.host, "--force")
    assert reports[0]["error"] == "" and reports[0]["changed"], done
    job = jobs.job("doomed")
    assert job["state"] == "lost", job
    assert job["last_line"].startswith("tick "), job
    ticks = jobs.ticks("doomed")
    assert len(ticks) >= 2 and ticks == list(range(1, len(ticks) + 1))
    text = jobs.laptop.devbox("ps", jobs.host).stdout
    assert re.search(r"^doomed\s+lost\s", text, re.M), text
    # Its name is not taken over silently (issue 23.8): the lost job's log is all that is left of it.
    refused = jobs.run("doomed", ["sh", "-c", "echo again"], expect=2)
    assert "was lost" in refused.stderr and "--replace" in refused.stderr
    jobs.run("doomed", ["sh", "-c", "echo again"], "--replace")
    jobs.wait_state("doomed", "exited 0")


# ---------------------------------------------------------------- arguments, names, env, cwd

NASTY_ARGS = ["two words", "it's", 'say "hi"', "$HOME", "a;b", "$(id -u)", "`id`", "*", "back\\slash",
              "", "  lead and trail  ", "--flag", "x && echo pwned", "tab\there", "~", "%s"]


def test_arguments_reach_the_program_exactly_as_given(jobs):
    jobs.run("args", ["printf", "[%s]\\n", *NASTY_ARGS])
    jobs.run("args2", ["sh", "-c", 'printf "[%s]\\n" "$@"', "sh", *NASTY_ARGS], "--cwd", "/workspace", "--env", "A=1")
    ended = jobs.wait_ended("args", "args2")
    assert ended["args"]["state"] == ended["args2"]["state"] == "exited 0", ended
    assert jobs.log("args").splitlines() == [f"[{a}]" for a in NASTY_ARGS]
    assert jobs.log("args2").splitlines() == [f"[{a}]" for a in NASTY_ARGS]


BAD_NAMES = ["x; rm -rf ~", "a.b", "-x", "../x", "a/b", "$(id)", "x" * 65, "a b", "\u00fcn\u00ef", "a:b"]


def test_unsafe_job_names_are_refused_with_the_rule_and_touch_nothing(jobs):
    jobs.laptop.ssh(jobs.box, "touch ~/canary")
    for bad in BAD_NAMES:
        done = jobs.laptop.devbox("run", jobs.host, "--name", bad, "--", "true")
        assert done.returncode == 2 and "job names are 1-64 characters" in done.stderr, (bad, done)
    bad = "x; rm -rf ~"
    for args in (["run", jobs.host, "--name", bad, "--", "true"], ["logs", jobs.host, bad],
                 ["stop", jobs.host, bad], ["attach", jobs.host, bad]):
        done = jobs.laptop.devbox(*args)
        assert done.returncode == 2 and "job names are" in done.stderr, (args, done)
    r = jobs.laptop.ssh(jobs.box, "ls ~/canary; ls -A ~/.devbox/jobs 2>/dev/null | wc -l")
    assert r.stdout.split() == [f"{'/home/dev'}/canary", "0"], r


def test_a_running_name_is_refused_unless_replace(jobs):
    jobs.run("dup", TICKER)
    done = jobs.run("dup", ["echo", "second"], expect=2)
    assert "already running" in done.stderr and "--replace" in done.stderr, done
    assert jobs.state("dup") == "running"
    jobs.run("dup", ["sh", "-c", "echo replaced"], "--replace")
    job = jobs.wait_state("dup", "exited 0")
    assert jobs.log("dup") == "replaced\n", "the new job has a fresh log"
    assert job["command"] == "sh -c 'echo replaced'"
    left = jobs.laptop.ssh(jobs.box, "ps -eo args | grep -c '[t]ick'")
    assert left.stdout.strip() == "0", "the replaced job's program is gone"


def test_env_and_cwd_reach_the_job(jobs):
    jobs.laptop.ssh(jobs.box, "mkdir -p ~/proj")
    jobs.run("envcwd", ["sh", "-c", 'pwd; echo "$GREETING"; echo "$TRICKY"'],
             "--cwd", "/workspace", "--env", "GREETING=hello world", "--env", "TRICKY=$x;'y'=z")
    jobs.run("home", ["pwd"])
    jobs.run("tilde", ["pwd"], "--cwd", "~/proj")
    ended = jobs.wait_ended("envcwd", "home", "tilde")
    assert {j["state"] for j in ended.values()} == {"exited 0"}, ended
    assert jobs.log("envcwd").splitlines() == ["/workspace", "hello world", "$x;'y'=z"]
    assert ended["home"]["last_line"] == "/home/dev", "the default is the home directory"
    assert ended["tilde"]["last_line"] == "/home/dev/proj", "a quoted ~/ means the box home"


def test_bad_cwd_and_bad_env_are_refused_before_starting(jobs):
    done = jobs.run("nocwd", ["true"], "--cwd", "/no/such/dir", expect=2)
    assert "/no/such/dir" in done.stderr
    done = jobs.run("badenv", ["true"], "--env", "NOEQUALS", expect=2)
    assert "--env" in done.stderr
    assert jobs.ps() == {}


# ---------------------------------------------------------------- attach


def test_attach_read_only_shows_the_job_in_a_terminal(jobs):
    jobs.run("watch", ["sh", "-c", "echo visible-in-attach; sleep 60"])
    time.sleep(0.5)
    cli = f"{shlex.quote(sys.executable)} -m devbox.cli attach {jobs.host} watch --read-only"
    # `script` gives the CLI a terminal, as a user's shell would; stdin stays open (a pipe).
    proc = subprocess.Popen(["script", "-qfec", cli, "/dev/null"], cwd=jobs.laptop.devbox.cwd,
                            env={**jobs.laptop.devbox.env, "TERM": "xterm"},
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out = b""
        deadline = time.monotonic() + 15
        fd = proc.stdout.fileno()
        while not (b"visible-in-attach" in out and b"watch" in out) and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                out += chunk
        clients = jobs.laptop.ssh(jobs.box, "tmux list-clients -t =watch -F '#{client_flags}'")
    finally:
        proc.kill()
        proc.wait()
    assert b"visible-in-attach" in out, out[-2000:]
    assert "read-only" in clients.stdout, ("attached read-only", clients)
    assert jobs.state("watch") == "running", "detaching (the connection dropping) leaves the job running"


# ---------------------------------------------------------------- pure helpers


def test_parse_jobs_states_and_durations():
    from datetime import datetime, timezone
    now = datetime(2025, 1, 1, 0, 1, 0, tzinfo=timezone.utc)
    text = ("a\tyes\t\t2025-01-01T00:00:00Z\t\tcmd a\tlast a\n"
            "b\tno\t3\t2025-01-01T00:00:00Z\t2025-01-01T00:00:10Z\tcmd b\tlast b\n"
            "c\tno\t\t2025-01-01T00:00:00Z\t\tcmd c\t\n")
    a, b, c = parse_jobs(text, now)
    assert (a.state, a.duration_s, a.last_line) == ("running", 60, "last a")
    assert (b.state, b.duration_s) == ("exited 3", 10)
    assert (c.state, c.duration_s) == ("lost", None)


def test_names_signals_and_scripts_validate_their_input():
    assert validate_name("train-v2_b") == "train-v2_b"
    for bad in ["a.b", "x\n", "", "-a"]:
        with pytest.raises(ConfigError):
            validate_name(bad)
    assert signal_number("term") == (15, "SIGTERM") and signal_number("SIGINT") == (2, "SIGINT") and signal_number("9") == (9, "SIGKILL")
    with pytest.raises(ConfigError):
        signal_number("NOPE")
    with pytest.raises(ConfigError):
        run_script("x", [], None, [])
    with pytest.raises(ConfigError):
        run_script("x", ["true"], None, ["1BAD=x"])


def test_ctrl_c_on_logs_follow_ends_cleanly_and_leaves_no_tail_in_the_box(jobs):
    jobs.run("ticker", ["sh", "-c", "while true; do echo tick; sleep 0.2; done"])
    proc = subprocess.Popen([sys.executable, "-m", "devbox.cli", "logs", jobs.host, "ticker", "-f"],
                            cwd=jobs.laptop.devbox.cwd, env=jobs.laptop.devbox.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "tick"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 130
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    count_tails = "grep -l '^tail' /proc/[0-9]*/cmdline 2>/dev/null | wc -l"
    for _ in range(50):
        left = subprocess.run(["docker", "exec", jobs.box, "sh", "-c", count_tails], capture_output=True, text=True).stdout.strip()
        if left == "0":
            break
        time.sleep(0.2)
    assert left == "0", "the box still runs the follower's tail"
    assert jobs.state("ticker") == "running", "Ctrl-C on logs never touches the job"
