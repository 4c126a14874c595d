"""Read-only questions to a host, asked in one SSH round trip, parsed by pure functions.

Scripts print their answers between markers; `parse_sections` splits them and each
`parse_*` turns one answer into data. A no-op `up` costs one exchange (state_script);
one that will create something asks host_check_script too, on the same connection. With
`base_image = "auto"` and GPUs, gpu_script comes first (the image tag depends on its answer).
"""
from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from typing import Callable

from devbox.boxenv import READ_BOX_ENV, InBox, parse_box_env
from devbox.config import BoxSpec
from devbox.errors import CommandTimedOut, HostUnreachable

MARK = "@@devbox@@"
SECTION = f"sec() {{ echo; echo '{MARK}' \"$1\"; }}"
BOX_STATE_DIR = ".devbox"
AUTHORIZED_KEYS_DIR = "/etc/devbox/keys"          # the keys volume, read-only in the box
AUTHORIZED_KEYS_FILE = f"{AUTHORIZED_KEYS_DIR}/authorized_keys"


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    driver: str
    memory_mib: int
    uuid: str = ""
    compute_cap: str = ""                  # "9.0"; "" where the driver cannot say (before ~510)


@dataclass
class Facts:
    """What devbox knows about a host after one gather."""

    docker_version: str | None = None
    docker_error: str = ""
    runtimes: tuple[str, ...] = ()
    cdi_nvidia: bool = False
    docker_root_free_kib: int | None = None
    image_present: bool = False
    base_present: bool = False
    box: dict | None = None                # `docker inspect` of the box, or None
    used_ports: frozenset[int] = frozenset()
    gpus: tuple[Gpu, ...] = ()
    driver_cuda: str | None = None         # max CUDA the driver supports ("12.4")
    nvidia_smi_error: str = ""
    missing_paths: tuple[str, ...] = ()
    resolved_paths: dict[str, str] = field(default_factory=dict)   # host path -> where it leads (readlink -f)
    authorized_keys: str | None = None     # the box's current file, when it runs
    box_host_key: str | None = None        # the box's host public key, when it runs
    volume_owner: str | None = None        # "uid:gid" the box's volumes were made for
    running_jobs: tuple[str, ...] = ()
    job_count: int = 0
    host_checked: bool = False             # runtimes, disk, GPUs were asked (host_check_script)
    host_cpus: int | None = None           # what the engine reports (docker info NCPU)
    host_memory: int | None = None         # bytes (docker info MemTotal)
    apparmor: bool = False                 # the engine confines containers with AppArmor
    memlock_max: int | None = None         # bytes the engine may give a box (-1: unlimited), None: unknown
    box_base: str = ""                     # the base image the existing box was built on (its label)
    gpu_memory_used: dict[int, int] = field(default_factory=dict)   # GPU index -> MiB in use now
    box_env: InBox | None = None           # the secrets volume as the running box sees it (digest, env, names)
    gpu_holders: tuple = ()                # placement.GpuHolder: the running boxes of the engine and their GPUs
    gpu_processes: tuple = ()              # placement.GpuProcess: compute processes and their containers

    @property
    def box_labels(self) -> dict:
        return (self.box or {}).get("Config", {}).get("Labels") or {}

    @property
    def box_running(self) -> bool:
        return bool(self.box and self.box.get("State", {}).get("Running"))


# ---------------------------------------------------------------- the questions
#
# Each question is its shell command and, right below it, what its answer sets in Facts.
# `state_script` and `host_check_script` only choose which questions to ask, in one script.

@dataclass(frozen=True)
class Question:
    section: str
    ask: Callable[[BoxSpec, str], str]              # (spec, image tag) -> shell printing the answer
    read: Callable[[Facts, list[str], str], None]   # (facts, answers, image tag): set what it learnt


QUESTIONS: dict[str, Question] = {}


def question(section: str, ask: Callable[[BoxSpec, str], str]):
    """Register `read` as the answer to `ask` (a decorator, so the two stand together)."""
    def register(read):
        QUESTIONS[section] = Question(section, ask, read)
        return read
    return register


def _last(answers: list[str]) -> str:
    return answers[-1] if answers else ""


q = shlex.quote


@question("docker", lambda spec, tag: "docker version --format '{{.Server.Version}}' 2>&1")
def _docker(facts: Facts, answers: list[str], tag: str) -> None:
    version = _last(answers)
    if re.match(r"^\d+\.\d+", version):
        facts.docker_version = version.splitlines()[0]
    else:
        facts.docker_error = version.splitlines()[-1] if version else "docker not found"


@question("images", lambda spec, tag: f"docker image inspect --format '{{{{json .RepoTags}}}}' {q(tag)} {q(spec.base_image)} 2>/dev/null")
def _images(facts: Facts, answers: list[str], tag: str) -> None:
    found = parse_found_images(_last(answers))
    facts.image_present = any(tag in tags for tags in found)
    facts.base_present = any(tag not in tags for tags in found)


@question("owner", lambda spec, tag: "docker volume inspect --format '{{index .Labels \"devbox.uid\"}}:{{index .Labels \"devbox.gid\"}}' "
          f"{q(spec.volume_name(spec.all_volumes()[0]))} 2>/dev/null")
def _owner(facts: Facts, answers: list[str], tag: str) -> None:
    owner = _last(answers)
    facts.volume_owner = owner if re.match(r"^\d+:\d+$", owner) else None


# Sets $box for the questions after it: the ports and the ones asked inside the box.
@question("box", lambda spec, tag: f'box=$(docker container inspect {q(spec.box_name)} 2>/dev/null); echo "$box"')
def _box(facts: Facts, answers: list[str], tag: str) -> None:
    facts.box = parse_inspect(_last(answers))


# Only needed to choose a port, so only asked for a missing box (whose inspect prints "[]").
# A stopped box publishes nothing, but its port is its own (labels): `up` will start it on it.
@question("ports", lambda spec, tag: 'case "$box" in ""|"[]") docker ps -a --format \'{{.Ports}}\' 2>/dev/null; '
          'docker ps -a --filter label=devbox.port --format \':{{.Label "devbox.port"}} \' 2>/dev/null; '
          '(ss -ltnH 2>/dev/null || true) | awk \'{print $4}\';; esac')
def _ports(facts: Facts, answers: list[str], tag: str) -> None:
    facts.used_ports = parse_ports(_last(answers))


# Each host path: missing, or where it really leads (a symlink to the Docker socket is the socket).
@question("path", lambda spec, tag: "; ".join(
    f'if [ -e {q(v.source)} ]; then printf "ok\\t%s\\t%s\\n" {q(v.source)} "$(readlink -f -- {q(v.source)})"; '
    f'else printf "missing\\t%s\\n" {q(v.source)}; fi' for v in spec.volumes if not v.is_named) or "true")
def _paths(facts: Facts, answers: list[str], tag: str) -> None:
    rows = [line.split("\t") for line in _last(answers).splitlines()]
    facts.missing_paths = tuple(row[1] for row in rows if row[0] == "missing" and len(row) == 2)
    facts.resolved_paths = {row[1]: row[2] for row in rows if row[0] == "ok" and len(row) == 3 and row[2]}


# -- inside the box, as its user, in one `docker exec` (only when it runs)

@question("keys", lambda spec, tag: f"cat {AUTHORIZED_KEYS_FILE} 2>/dev/null")
def _keys(facts: Facts, answers: list[str], tag: str) -> None:
    facts.authorized_keys = answers[-1] if answers else None


@question("boxenv", lambda spec, tag: READ_BOX_ENV)
def _boxenv(facts: Facts, answers: list[str], tag: str) -> None:
    facts.box_env = parse_box_env(answers[-1]) if answers else None


@question("hostkey", lambda spec, tag: f'cat "$HOME/{BOX_STATE_DIR}/hostkeys/ssh_host_ed25519_key.pub" 2>/dev/null')
def _hostkey(facts: Facts, answers: list[str], tag: str) -> None:
    facts.box_host_key = _last(answers) or None


# Lists "<name> <running|ended>" per job dir: running when its tmux session exists (last: it may exit).
JOBS_SCAN = (
    'cd "$HOME/.devbox/jobs" 2>/dev/null || exit 0; '
    'for d in */; do n="${d%/}"; [ -d "$n" ] || continue; '
    'if tmux has-session -t "=$n" 2>/dev/null; then echo "$n running"; else echo "$n ended"; fi; done'
)


@question("jobs", lambda spec, tag: JOBS_SCAN)
def _jobs(facts: Facts, answers: list[str], tag: str) -> None:
    jobs = [line.split() for line in _last(answers).splitlines() if len(line.split()) == 2]
    facts.running_jobs = tuple(name for name, state in jobs if state == "running")
    facts.job_count = len(jobs)


# -- preflight: asked only when `up` will create something

@question("checked", lambda spec, tag: "echo yes")
def _checked(facts: Facts, answers: list[str], tag: str) -> None:
    facts.host_checked = _last(answers) == "yes"


# One `docker info` (0.13 s) for runtimes, resources and the disk: $info serves the next two.
@question("runtimes", lambda spec, tag: "info=$(docker info --format '{{.DockerRootDir}}|{{json .Runtimes}}|{{.NCPU}} {{.MemTotal}} "
          "{{json .SecurityOptions}}' 2>/dev/null); rest=\"${info#*|}\"; echo \"${rest%%|*}\"")
def _runtimes(facts: Facts, answers: list[str], tag: str) -> None:
    facts.runtimes = parse_runtimes(_last(answers))


@question("resources", lambda spec, tag: 'echo "${rest#*|}"')
def _resources(facts: Facts, answers: list[str], tag: str) -> None:
    facts.host_cpus, facts.host_memory, facts.apparmor = parse_resources(_last(answers))


@question("disk", lambda spec, tag: 'df -Pk "${info%%|*}" 2>/dev/null | tail -1')
def _disk(facts: Facts, answers: list[str], tag: str) -> None:
    facts.docker_root_free_kib = parse_df(_last(answers))


@question("cdi", lambda spec, tag: "ls /etc/cdi/nvidia.yaml /var/run/cdi/nvidia.yaml 2>/dev/null")
def _cdi(facts: Facts, answers: list[str], tag: str) -> None:
    facts.cdi_nvidia = bool(_last(answers))


# Old drivers (before ~510) refuse the compute_cap field: ask again without it.
GPU_FIELDS = "index,uuid,name,driver_version,memory.total"
GPU_QUERY = f"nvidia-smi --query-gpu={GPU_FIELDS}{{}} --format=csv,noheader,nounits 2>&1"


@question("gpus", lambda spec, tag: f'g=$({GPU_QUERY.format(",compute_cap")}) || g=$({GPU_QUERY.format("")}); echo "$g"')
def _gpus(facts: Facts, answers: list[str], tag: str) -> None:
    if answers:
        facts.gpus, facts.nvidia_smi_error = parse_gpu_csv(answers[-1])


@question("gpumem", lambda spec, tag: "nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits 2>/dev/null")
def _gpumem(facts: Facts, answers: list[str], tag: str) -> None:
    rows = [[p.strip() for p in line.split(",")] for line in _last(answers).splitlines()]
    facts.gpu_memory_used = {int(r[0]): int(r[1]) for r in rows if len(r) == 2 and r[0].isdigit() and r[1].isdigit()}


# Who holds which GPU: every running devbox box's labels, and each compute process's container.
HOLDERS = ("docker ps --no-trunc --filter label=devbox.managed=true --format "
           "'{{.ID}}\t{{.Names}}\t{{.Label \"devbox.box\"}}\t{{.Label \"devbox.owner\"}}\t{{.Label \"devbox.gpus\"}}\t"
           "{{.Label \"devbox.shared\"}}' 2>/dev/null")
GPU_PROCESSES = ("nvidia-smi --query-compute-apps=pid,gpu_uuid --format=csv,noheader 2>/dev/null | "
                 "while IFS=', ' read -r p u; do case \"$p\" in *[!0-9]*|'') continue;; esac; "
                 "c=$(grep -o -E '[0-9a-f]{64}' /proc/$p/cgroup 2>/dev/null | head -n1); printf '%s\t%s\t%s\n' \"$p\" \"$u\" \"$c\"; done")


@question("holders", lambda spec, tag: HOLDERS)
def _holders(facts: Facts, answers: list[str], tag: str) -> None:
    from devbox.placement import parse_holders

    facts.gpu_holders = parse_holders(_last(answers))


@question("gpuprocs", lambda spec, tag: GPU_PROCESSES)
def _gpuprocs(facts: Facts, answers: list[str], tag: str) -> None:
    from devbox.placement import parse_gpu_processes

    facts.gpu_processes = parse_gpu_processes(_last(answers))


@question("smi", lambda spec, tag: "nvidia-smi 2>/dev/null | head -5")
def _smi(facts: Facts, answers: list[str], tag: str) -> None:
    if answers:
        facts.driver_cuda = parse_driver_cuda(answers[-1])


# The most locked memory a box may get: `--ulimit memlock=-1` needs an engine that may raise
# its hard limit (CAP_SYS_RESOURCE, bit 24 of CapEff) or one whose own limit is unlimited.
# /proc/PID/limits and status are world-readable; without a visible dockerd, this shell's own.
# Every dockerd is read (a host may run several, and one may end meanwhile): the box gets the
# lowest limit any of them has, which each of them can give.
@question("memlock", lambda spec, tag: 'ps=$(pidof dockerd 2>/dev/null); [ -n "$ps" ] || ps=$$; for p in $ps; do '
          "l=$(awk '/^Max locked memory/ {print $5}' /proc/$p/limits 2>/dev/null); "
          "c=$(awk '/^CapEff/ {print $2}' /proc/$p/status 2>/dev/null); "
          '[ -n "$l" ] && [ -n "$c" ] && echo "$l $c"; done; true')
def _memlock(facts: Facts, answers: list[str], tag: str) -> None:
    facts.memlock_max = parse_memlock(_last(answers))


@question("base", lambda spec, tag: f"docker container inspect --format '{{{{index .Config.Labels \"devbox.base\"}}}}' {q(spec.box_name)} 2>/dev/null")
def _base(facts: Facts, answers: list[str], tag: str) -> None:
    facts.box_base = _last(answers) if re.match(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$", _last(answers)) else ""


def ask(spec: BoxSpec, image_tag: str, sections: list[str]) -> list[str]:
    return [f"sec {section}; {QUESTIONS[section].ask(spec, image_tag)}" for section in sections]


def state_script(spec: BoxSpec, image_tag: str) -> str:
    """What the host holds for this box; every `up` and `status` asks it (one exchange).

    Few docker calls on purpose (each costs 20-150 ms on a host): `docker version` (not
    `docker info`, 0.13 s), one image inspect for tag and base, one container inspect,
    one exec into the box. The exec (the dearest, ~55 ms of runc) starts first, in the
    background, and its answer is printed only if the inspect says the box runs; where no
    temp file can be made it runs in turn. Every value is quoted.
    """
    inside = "; ".join([SECTION, *ask(spec, image_tag, ["keys", "boxenv", "hostkey", "jobs"])])
    exec_inside = f"docker exec -u {spec.uid}:{spec.gid} -e HOME={q(spec.home)} {q(spec.box_name)} sh -c {q(inside)} 2>/dev/null"
    lines = [SECTION,
             f't=$(mktemp 2>/dev/null) && {{ {exec_inside} >"$t" & }}',
             *ask(spec, image_tag, ["docker", "images", "owner", "box", "ports", "path"]),
             "sec exec; wait",
             'case "$box" in *\'"Running": true\'*)',
             f'if [ -n "$t" ]; then cat "$t"; else {exec_inside}; fi;;',
             "esac", 'rm -f "$t"', "true"]
    return "\n".join(lines) + "\n"


def host_check_script(spec: BoxSpec, asked: frozenset[str] = frozenset()) -> str:
    """What preflight needs before creating anything: runtimes, resources, disk, GPUs and driver.

    Asked only when `up` will create or re-create something (`docker info` alone costs
    0.13 s): a box that already matches its spec needs no preflight.
    """
    sections = ["checked", "runtimes", "resources", "cdi", "disk", "memlock"] + (
        ["gpus", "smi", "holders", "gpuprocs"] if spec.wants_gpus else [])
    return "\n".join([SECTION, *ask(spec, "", [s for s in sections if s not in asked]), "true"]) + "\n"


def gpu_script(spec: BoxSpec, memory: bool = False) -> str:
    """What `base_image = "auto"` needs before the image tag is known: the GPUs, the driver's
    CUDA and the base the box has now (one exchange, nvidia-smi calls of ~25 ms each);
    `memory`: the memory in use too (status)."""
    return "\n".join([SECTION, *ask(spec, "", ["gpus", "smi", "base"] + (["gpumem"] if memory else [])), "true"]) + "\n"


def parse_sections(text: str) -> dict[str, list[str]]:
    """Split gather output into {section: [answers]} (a section may repeat)."""
    sections: dict[str, list[str]] = {}
    current, buffer = None, []
    for line in text.splitlines():
        if line.startswith(MARK):
            if current is not None:
                sections.setdefault(current, []).append("\n".join(buffer).strip())
            current, buffer = line[len(MARK):].strip(), []
        elif current is not None:
            buffer.append(line)
    if current is not None:
        sections.setdefault(current, []).append("\n".join(buffer).strip())
    return sections


def parse_facts(text: str, image_tag: str = "") -> Facts:
    """Every question's answer read into one Facts (an unasked question leaves its default)."""
    sections = parse_sections(text)
    facts = Facts()
    for section, question_ in QUESTIONS.items():
        question_.read(facts, sections.get(section, []), image_tag)
    return facts


def parse_found_images(text: str) -> list[list[str]]:
    """One RepoTags list per image that `docker image inspect TAG BASE` found."""
    found = []
    for line in text.splitlines():
        try:
            found.append(json.loads(line) or [])
        except json.JSONDecodeError:
            continue
    return found


def parse_runtimes(text: str) -> tuple[str, ...]:
    try:
        return tuple(sorted(json.loads(text or "{}")))
    except (json.JSONDecodeError, TypeError):
        return ()


def parse_resources(line: str) -> tuple[int | None, int | None, bool]:
    """CPUs, memory bytes and AppArmor from `docker info`'s `NCPU MemTotal [SecurityOptions]`."""
    parts = line.split(" ", 2)
    cpus = int(parts[0]) if parts and parts[0].isdigit() else None
    memory = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    return cpus, memory, len(parts) > 2 and "name=apparmor" in parts[2]


def parse_df(line: str) -> int | None:
    """Available KiB from one `df -Pk` data line."""
    parts = line.split()
    return int(parts[3]) if len(parts) >= 6 and parts[3].isdigit() else None


def parse_inspect(text: str) -> dict | None:
    try:
        data = json.loads(text) if text else []
    except json.JSONDecodeError:
        return None
    return data[0] if data else None


def parse_ports(text: str) -> frozenset[int]:
    """Host ports already taken, from `docker ps` Ports and `ss -ltn` local addresses."""
    ports = set()
    for match in re.finditer(r":(\d+)(?:->|\s|$|,)", text):
        ports.add(int(match.group(1)))
    return frozenset(ports)


def parse_gpu_csv(text: str) -> tuple[tuple[Gpu, ...], str]:
    """GPUs from `nvidia-smi --query-gpu=index,uuid,name,driver_version,memory.total[,compute_cap]
    --format=csv,noheader,nounits` (or the older index,name,driver_version,memory.total)."""
    gpus, errors = [], []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4 and parts[0].isdigit():
            parts = [parts[0], "", *parts[1:]]
        if len(parts) in (5, 6) and parts[0].isdigit():
            memory = int(parts[4]) if parts[4].isdigit() else 0
            gpus.append(Gpu(int(parts[0]), parts[2], parts[3], memory, parts[1], parts[5] if len(parts) == 6 else ""))
        elif line.strip():
            errors.append(line.strip())
    return tuple(gpus), "; ".join(errors)


def parse_memlock(text: str) -> int | None:
    """`<hard limit bytes|unlimited> <CapEff hex>` per engine -> -1 (a box may have unlimited),
    the lowest limit in bytes, or None (nothing readable)."""
    words = text.split()
    limits = [_memlock_of(limit, caps) for limit, caps in zip(words[::2], words[1::2])] if len(words) % 2 == 0 else []
    if not limits or None in limits:
        return None
    finite = [limit for limit in limits if limit >= 0]
    return min(finite) if finite else -1


def _memlock_of(limit: str, caps: str) -> int | None:
    if not re.match(r"^[0-9a-fA-F]+$", caps):
        return None
    if limit == "unlimited" or int(caps, 16) & (1 << 24):   # CAP_SYS_RESOURCE may raise any limit
        return -1
    return int(limit) if limit.isdigit() else None


def parse_driver_cuda(text: str) -> str | None:
    """The "CUDA Version: 12.4" the driver supports, from nvidia-smi's banner."""
    match = re.search(r"CUDA Version:\s*([0-9]+\.[0-9]+)", text)
    return match.group(1) if match else None


def image_cuda(base_image: str) -> str | None:
    """The CUDA version a pytorch-style tag asks for (`...-cuda12.4-...` -> "12.4")."""
    match = re.search(r"cuda(\d+)\.(\d+)", base_image)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())


# What runs in a section whose own line does not say (state_script waits there for its exec).
HIDDEN_COMMANDS = {"exec": "docker exec into the box"}


def hung_command(script: str, printed: str) -> tuple[str, str]:
    """(section, command) of the question that was running when the script was stopped:
    the last section it announced, and the first command of that section's line."""
    sections = [line[len(MARK):].strip() for line in printed.splitlines() if line.startswith(MARK)]
    section = sections[-1] if sections else ""
    if not section:
        return "", "the first question"
    if section in HIDDEN_COMMANDS:
        return section, HIDDEN_COMMANDS[section]
    line = next((l for l in script.splitlines() if l.startswith(f"sec {section};")), "")
    body = line.split(";", 1)[1] if ";" in line else ""
    inner = re.search(r"\$\(([^)]*)\)", body)
    command = inner.group(1) if inner else re.split(r";\s| \| ", body)[0]
    command = re.sub(r"\s*2>(&1|/dev/null)", "", command).strip()
    return section, _clip(command) if command else f"the `{section}` question"


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def ask_host(host, script: str) -> str:
    """The answers to a question script, or, when it hangs, a HostUnreachable naming the
    command that hung (the host ends the script, and all it started, at the same time)."""
    try:
        return host.ask(script).stdout
    except CommandTimedOut as exc:
        section, command = hung_command(script, exc.stdout)
        raise HostUnreachable(f"{host.alias}: `{command}` gave no answer within {exc.seconds:g} s (host question "
                              f"{section or 'start'}; devbox stopped it)",
                              "run it by hand on the host to see why; DEVBOX_QUESTION_TIMEOUT=SECONDS allows longer") from exc


def gather(host, spec: BoxSpec, image_tag: str, host_check: Callable[[Facts], bool] | None = None, asked: str = "") -> Facts:
    """The box's state in one exchange over `host` (a remote.Host); the host checks in a
    second one only when `host_check(facts)` says so (`up` about to create something).
    `asked`: answers an earlier exchange already got (gpu_script), not asked again."""
    state = asked + ask_host(host, state_script(spec, image_tag))
    facts = parse_facts(state, image_tag)
    if host_check is not None and host_check(facts):
        again = host_check_script(spec, frozenset(parse_sections(asked)))
        facts = parse_facts(state + ask_host(host, again), image_tag)
    return facts
