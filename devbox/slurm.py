"""A Slurm box: what devbox asks the scheduler, and how it reads the answers. Pure.

On a Slurm cluster the scheduler, not devbox, decides where a box runs and which GPUs it
holds. A Slurm box is a named box whose host is the node its batch job lands on: the job
holds the GPUs and waits on the box (it ends when the box stops, and removes the box when
the job ends), and devbox starts the box on that node with exactly the job's GPUs.
devbox/scheduler.py does the talking (over the login node); this module builds the
commands and the job script and parses what Slurm prints, so all of it is unit-tested.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from devbox.boxid import BoxId
from devbox.errors import ConfigError

# What a `slurm = { … }` table of a [boxes.NAME] may hold.
SLURM_KEYS = {
    "login": 'the login node: a Host from your ~/.ssh/config, e.g. "hpc-login" (required)',
    "partition": 'the partition to run in, e.g. "gpu" (required)',
    "gpus": "how many GPUs the job holds, 1..64 (required)",
    "time": 'the time limit as Slurm writes it, e.g. "8:00:00", "1-00:00:00" or "90" (minutes) (required)',
    "shared_dir": 'a folder every node and the login node see, e.g. "/shared/devbox": the box keeps its home, '
                  "workspace and host key in SHARED_DIR/NAME (required)",
    "gpu_type": 'a GPU type of the partition\'s GRES, e.g. "h200" (default: any)',
    "account": "the Slurm account to charge (sbatch --account)",
    "qos": "the quality of service (sbatch --qos)",
    "constraint": "node features the job needs (sbatch --constraint)",
    "exclude": 'nodes the job must not land on, e.g. "node1" or "node[1-3]" (sbatch --exclude)',
}
REQUIRED = ("login", "partition", "gpus", "time", "shared_dir")
WORD_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}\Z")
NODELIST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.,\[\]-]{0,255}\Z")
SHARED_DIR_RE = re.compile(r"^/[A-Za-z0-9._@+/-]*\Z")
TIME_RE = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?\Z")
JOB_PREFIX = "devbox-"
# How long the job waits for devbox to start its box before it gives its GPUs back.
START_GRACE_S = 900
# Signal the job's script this long before the time limit (only when the limit is long enough
# for it: Slurm sends such signals up to a minute early), so the box stops cleanly.
WARN_BEFORE_S = 120


@dataclass(frozen=True)
class SlurmSpec:
    login: str
    partition: str
    gpus: int
    time: str
    shared_dir: str
    gpu_type: str = ""
    account: str = ""
    qos: str = ""
    constraint: str = ""
    exclude: str = ""

    @property
    def time_s(self) -> int:
        return parse_time(self.time)

    @property
    def gres(self) -> str:
        return f"gpu:{self.gpu_type}:{self.gpus}" if self.gpu_type else f"gpu:{self.gpus}"


def parse_time(text: str) -> int:
    """Seconds in a Slurm time limit: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    match = TIME_RE.match(text.strip()) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"{text!r} is not a Slurm time")
    days, a, b, c = match.groups()
    if days is None:
        if b is None:
            return int(a) * 60                                      # minutes
        if c is None:
            return int(a) * 60 + int(b)                             # minutes:seconds
        return int(a) * 3600 + int(b) * 60 + int(c)                 # hours:minutes:seconds
    return int(days) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)


def format_time(seconds: int) -> str:
    days, rest = divmod(int(seconds), 86400)
    text = f"{rest // 3600}:{rest // 60 % 60:02d}:{rest % 60:02d}"
    return f"{days}-{text}" if days else text


def parse_slurm_table(value, where: str) -> SlurmSpec:
    """The `slurm = { … }` table of a box, each key checked; errors name the key."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: 'slurm' must be a table", 'write slurm = { login = "hpc-login", partition = "gpu", gpus = 2, '
                          'time = "8:00:00", shared_dir = "/shared/devbox" }')
    for key in value:
        if key not in SLURM_KEYS:
            raise ConfigError(f"{where}: unknown key slurm.{key}", f"allowed: {', '.join(SLURM_KEYS)}")
    for key in REQUIRED:
        if key not in value:
            raise ConfigError(f"{where}: slurm.{key} is missing", f"slurm.{key} must be {SLURM_KEYS[key]}")
    fields = {}
    for key, item in value.items():
        try:
            fields[key] = _PARSERS[key](item)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: bad value for slurm.{key}: {exc}", f"slurm.{key} must be {SLURM_KEYS[key]}") from None
    return SlurmSpec(**fields)


def _word(value) -> str:
    if not isinstance(value, str) or not WORD_RE.match(value):
        raise ValueError(f"{value!r} is not a name (letters, digits, _ . : -)")
    return value


def _gpus(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 64:
        raise ValueError(f"{value!r} is not a whole number 1..64")
    return value


def _time(value) -> str:
    seconds = parse_time(value)
    if seconds < 60:
        raise ValueError(f"{value!r} is under a minute")
    return value.strip()


def _shared_dir(value) -> str:
    if not isinstance(value, str) or not SHARED_DIR_RE.match(value) or "/../" in value + "/" or value.rstrip("/") in ("", "/tmp"):
        raise ValueError(f"{value!r} is not an absolute folder path (letters, digits, . _ @ + - /)")
    return value.rstrip("/")


def _nodes(value) -> str:
    if not isinstance(value, str) or not NODELIST_RE.match(value):
        raise ValueError(f"{value!r} is not a node list")
    return value


_PARSERS = {"login": _word, "partition": _word, "gpus": _gpus, "time": _time, "shared_dir": _shared_dir,
            "gpu_type": _word, "account": _word, "qos": _word, "constraint": _word, "exclude": _nodes}


# ---------------------------------------------------------------- asking


def job_name(box: BoxId) -> str:
    """The job's name says which box it is: `squeue --me --name` finds it again."""
    return JOB_PREFIX + box.name


def sbatch_argv(slurm: SlurmSpec, box: BoxId, data_root: str, test_only: bool = False) -> list[str]:
    """sbatch for the box's job (its script comes on stdin). --test-only asks Slurm to check
    the request (partition, limits, account) without submitting anything."""
    argv = ["sbatch", "--parsable", "--job-name", job_name(box), "--partition", slurm.partition, "--gres", slurm.gres,
            "--nodes", "1", "--ntasks", "1", "--time", slurm.time, "--no-requeue",
            "--output", f"{data_root}/slurm-%j.out", "--chdir", data_root]
    if slurm.time_s >= 10 * 60:
        argv += [f"--signal=B:TERM@{WARN_BEFORE_S}"]
    for flag, value in (("--account", slurm.account), ("--qos", slurm.qos), ("--constraint", slurm.constraint),
                        ("--exclude", slurm.exclude)):
        if value:
            argv += [flag, value]
    return argv + (["--test-only"] if test_only else [])


def job_script(box: BoxId, data_root: str, grace_s: int = START_GRACE_S) -> str:
    """The batch script: it holds the GPUs for the box and lives exactly as long as it.

    It waits (up to `grace_s`) for devbox to start the box, then while the box runs. The box
    stopping (`down`, a crash, an idle stop) ends the job, so the GPUs go back; the job
    ending (scancel, the time limit: Slurm signals the script) removes the box, its network
    and its keys and secrets volumes from the node. Home, workspace and host key stay in
    `data_root` on the shared storage. Why it ended goes to data_root/slurm-ended.
    """
    q = shlex.quote
    return f"""#!/bin/sh
# devbox: the Slurm job of box {box.name}; the box lives as long as this job.
box={q(box.container)}
ended={q(data_root + "/slurm-ended")}
job="$SLURM_JOB_ID"
say() {{ printf '%s\\t%s\\t%s\\n' "$job" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$1" > "$ended.tmp" && mv -f "$ended.tmp" "$ended"; }}
clean() {{
    docker rm --force "$box" "$box.next" "$box.old" >/dev/null 2>&1
    docker volume rm {q(box.keys_volume)} {q(box.secrets_volume)} >/dev/null 2>&1
    docker network rm {q(box.network)} >/dev/null 2>&1
}}
on_signal() {{ clean; say "the job was ended by Slurm (scancel, its time limit or the node going down): $1"; exit 0; }}
trap 'on_signal TERM' TERM
trap 'on_signal INT' INT
trap 'on_signal HUP' HUP
nap() {{ sleep "$1" & wait $!; }}
ours() {{ docker inspect --format '{{{{.State.Running}}}} {{{{index .Config.Labels "devbox.slurm.job"}}}}' "$box" 2>/dev/null; }}
echo "devbox: job $job holds GPUs ${{SLURM_JOB_GPUS:-?}} on ${{SLURMD_NODENAME:-?}} for box $box"
if ! said=$(docker version --format '{{{{.Server.Version}}}}' 2>&1); then
    echo "devbox: docker does not answer on this node: $said"
    say "docker does not answer on ${{SLURMD_NODENAME:-the node}} for the job's user: $said"; exit 1
fi
waited=0
until [ "$(ours)" = "true $job" ] || [ "$(ours)" = "false $job" ]; do     # made for this job (it may stop at once)
    if [ "$waited" -ge {int(grace_s)} ]; then clean; say "no box was started within {int(grace_s)} s of the job starting"; exit 0; fi
    nap 2; waited=$((waited + 2))
done
gone=0
while [ "$gone" -lt 3 ]; do             # three looks in a row: `up` swaps a re-created box in place
    if [ "$(ours)" = "true $job" ]; then gone=0; else gone=$((gone + 1)); fi
    nap 3
done
code=$(docker inspect --format '{{{{.State.ExitCode}}}}' "$box" 2>/dev/null || echo removed)
clean
say "the box stopped (exit $code): the job ended and gave its GPUs back"
"""


# ---------------------------------------------------------------- reading answers


def parse_record(text: str) -> dict[str, str]:
    """One `scontrol show … -o` record (KEY=VALUE words) as a dict; a value runs to the next KEY=."""
    record: dict[str, str] = {}
    key = None
    for word in text.strip().split(" "):
        name, eq, value = word.partition("=")
        if eq and re.match(r"^[A-Za-z][A-Za-z0-9_:/]*\Z", name):
            key = name
            record[key] = value
        elif key is not None:
            record[key] += " " + word
    return record


def parse_index_list(text: str) -> tuple[int, ...]:
    """"0-1,3" -> (0, 1, 3)."""
    out: list[int] = []
    for part in text.split(","):
        if not part:
            continue
        low, _, high = part.partition("-")
        out += range(int(low), int(high or low) + 1)
    return tuple(out)


def job_gpus(detail: str) -> tuple[int, ...]:
    """The node-global GPU indices a job holds, from `scontrol show job -d`'s GRES=…(IDX:…)
    (never the job's renumbered CUDA_VISIBLE_DEVICES)."""
    found: list[int] = []
    for match in re.finditer(r"(?:GRES|Gres)=\S*?gpu[^(\s]*\(IDX:([0-9,-]+)\)", detail):
        found += parse_index_list(match.group(1))
    return tuple(sorted(set(found)))


@dataclass(frozen=True)
class Job:
    """A box's job as squeue/scontrol see it."""

    id: str
    state: str              # PENDING, RUNNING, CANCELLED, TIMEOUT, COMPLETED, …
    reason: str = ""        # why pending (Resources, Priority, …)
    node: str = ""
    time_left: str = ""
    partition: str = ""

    @property
    def running(self) -> bool:
        return self.state == "RUNNING"

    @property
    def queued(self) -> bool:
        return self.state in ("PENDING", "CONFIGURING", "REQUEUED")


SQUEUE_FORMAT = "%i|%T|%r|%N|%L|%P"


def parse_squeue(text: str) -> list[Job]:
    jobs = []
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) == 6 and fields[0].isdigit():
            jobs.append(Job(fields[0], fields[1], "" if fields[2] in ("None", "(null)") else fields[2],
                            "" if fields[3] in ("(null)", "") else fields[3], fields[4], fields[5]))
    return jobs


def partition_problems(record: dict[str, str], gres_by_node: list[str], slurm: SlurmSpec) -> list[str]:
    """What is wrong with asking this partition for this job: not up, no (such) GPUs, too long."""
    problems = []
    name = slurm.partition
    if record.get("State", "UP") != "UP":
        problems.append(f"partition {name} is {record.get('State')}")
    max_time = record.get("MaxTime", "UNLIMITED")
    if max_time not in ("UNLIMITED", "INFINITE") and parse_time(max_time) < slurm.time_s:
        problems.append(f"time {slurm.time} is over partition {name}'s limit {max_time}")
    counts = [gpu_count(gres, slurm.gpu_type) for gres in gres_by_node]
    if not any(counts):
        kind = f"{slurm.gpu_type} GPUs" if slurm.gpu_type else "GPUs"
        problems.append(f"partition {name} has no {kind} (its nodes' GRES: {', '.join(g for g in gres_by_node if g) or 'none'})")
    elif max(counts) < slurm.gpus:
        problems.append(f"no node of partition {name} has {slurm.gpus} GPUs (at most {max(counts)})")
    return problems


def gpu_count(gres: str, gpu_type: str = "") -> int:
    """GPUs in a node's GRES string ("gpu:h200:4(S:0-1),gpu:a100:2"), of one type or all."""
    total = 0
    for item in gres.split(","):
        parts = re.sub(r"\(.*?\)", "", item).split(":")
        if parts[0] != "gpu" or len(parts) < 2:
            continue
        count = parts[-1]
        kind = parts[1] if len(parts) == 3 else ""
        if count.isdigit() and (not gpu_type or kind == gpu_type):
            total += int(count)
    return total
