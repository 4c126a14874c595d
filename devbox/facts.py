"""Read-only questions to a host, asked in one SSH round trip, parsed by pure functions.

Scripts print their answers between markers; `parse_sections` splits them and each
`parse_*` turns one answer into data. A no-op `up` costs one exchange (state_script);
one that will create something asks host_check_script too, on the same connection.
"""
from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass

from devbox.config import BoxSpec

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
    authorized_keys: str | None = None     # the box's current file, when it runs
    box_host_key: str | None = None        # the box's host public key, when it runs
    volume_owner: str | None = None        # "uid:gid" the box's volumes were made for
    running_jobs: tuple[str, ...] = ()
    job_count: int = 0
    host_checked: bool = False             # runtimes, disk, GPUs were asked (host_check_script)
    host_cpus: int | None = None           # what the engine reports (docker info NCPU)
    host_memory: int | None = None         # bytes (docker info MemTotal)
    apparmor: bool = False                 # the engine confines containers with AppArmor

    @property
    def box_labels(self) -> dict:
        return (self.box or {}).get("Config", {}).get("Labels") or {}

    @property
    def box_running(self) -> bool:
        return bool(self.box and self.box.get("State", {}).get("Running"))


def state_script(spec: BoxSpec, image_tag: str) -> str:
    """What the host holds for this box; every `up` and `status` asks it (one exchange).

    Few docker calls on purpose (each costs 20-150 ms on a host): `docker version` (not
    `docker info`, 0.13 s), one image inspect for tag and base, one container inspect,
    one exec into the box. Every value is quoted.
    """
    box = shlex.quote(spec.box_name)
    q = shlex.quote
    lines = [
        SECTION,
        "sec docker; docker version --format '{{.Server.Version}}' 2>&1",
        f"sec images; docker image inspect --format '{{{{json .RepoTags}}}}' {q(image_tag)} {q(spec.base_image)} 2>/dev/null",
        f"sec owner; docker volume inspect --format '{{{{index .Labels \"devbox.uid\"}}}}:{{{{index .Labels \"devbox.gid\"}}}}' {q(spec.volume_name(spec.all_volumes()[0]))} 2>/dev/null",
        f"box=$(docker container inspect {box} 2>/dev/null)",
        'sec box; echo "$box"',
        # Ports are only needed to choose one: not for a box that already has its own.
        # (`docker container inspect` of a missing container prints "[]", not nothing.)
        'case "$box" in ""|"[]") sec ports; docker ps -a --format \'{{.Ports}}\' 2>/dev/null; (ss -ltnH 2>/dev/null || true) | awk \'{print $4}\';; esac',
    ]
    for volume in spec.volumes:
        if not volume.is_named:
            lines.append(f"sec path; [ -e {q(volume.source)} ] || echo {q(volume.source)}")
    # Inside the box (only when it runs), in one exec: keys file, host key, jobs.
    inside = (f"{SECTION}; sec keys; cat {AUTHORIZED_KEYS_FILE} 2>/dev/null; "
              f"sec hostkey; cat \"$HOME/{BOX_STATE_DIR}/hostkeys/ssh_host_ed25519_key.pub\" 2>/dev/null; sec jobs; {JOBS_SCAN}")
    lines += [
        'case "$box" in *\'"Running": true\'*)',
        f"docker exec -u {spec.uid}:{spec.gid} -e HOME={q(spec.home)} {box} sh -c {q(inside)} 2>/dev/null;;",
        "esac",
        "true",
    ]
    return "\n".join(lines) + "\n"


def host_check_script(spec: BoxSpec) -> str:
    """What preflight needs before creating anything: runtimes, disk, GPUs and driver.

    Asked only when `up` will create or re-create something (`docker info` alone costs
    0.13 s): a box that already matches its spec needs no preflight.
    """
    lines = [
        SECTION,
        "sec checked; echo yes",
        "info=$(docker info --format '{{.DockerRootDir}}|{{json .Runtimes}}|{{.NCPU}} {{.MemTotal}} {{json .SecurityOptions}}' 2>/dev/null)",
        'rest="${info#*|}"; sec runtimes; echo "${rest%%|*}"',
        'sec resources; echo "${rest#*|}"',
        "sec cdi; ls /etc/cdi/nvidia.yaml /var/run/cdi/nvidia.yaml 2>/dev/null",
        'sec disk; df -Pk "${info%%|*}" 2>/dev/null | tail -1',
    ]
    if spec.wants_gpus:
        lines += [
            "sec gpus; nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader,nounits 2>&1",
            "sec smi; nvidia-smi 2>/dev/null | head -5",
        ]
    return "\n".join(lines + ["true"]) + "\n"


# Lists "<name> <running|ended>" per job dir: running when its tmux session exists.
JOBS_SCAN = (
    'cd "$HOME/.devbox/jobs" 2>/dev/null || exit 0; '
    'for d in */; do n="${d%/}"; [ -d "$n" ] || continue; '
    'if tmux has-session -t "=$n" 2>/dev/null; then echo "$n running"; else echo "$n ended"; fi; done'
)


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
    s = {k: v[-1] for k, v in parse_sections(text).items()}
    paths = parse_sections(text).get("path", [])
    facts = Facts()
    version = s.get("docker", "")
    if re.match(r"^\d+\.\d+", version):
        facts.docker_version = version.splitlines()[0]
    else:
        facts.docker_error = version.splitlines()[-1] if version else "docker not found"
    facts.host_checked = s.get("checked") == "yes"
    facts.runtimes = parse_runtimes(s.get("runtimes", ""))
    facts.host_cpus, facts.host_memory, facts.apparmor = parse_resources(s.get("resources", ""))
    facts.cdi_nvidia = bool(s.get("cdi"))
    facts.docker_root_free_kib = parse_df(s.get("disk", ""))
    found = parse_found_images(s.get("images", ""))
    facts.image_present = any(image_tag in tags for tags in found)
    facts.base_present = any(image_tag not in tags for tags in found)
    facts.box = parse_inspect(s.get("box", ""))
    owner = s.get("owner", "")
    facts.volume_owner = owner if re.match(r"^\d+:\d+$", owner) else None
    facts.used_ports = parse_ports(s.get("ports", ""))
    facts.missing_paths = tuple(p for p in paths if p)
    if "gpus" in s:
        facts.gpus, facts.nvidia_smi_error = parse_gpu_csv(s["gpus"])
        facts.driver_cuda = parse_driver_cuda(s.get("smi", ""))
    facts.authorized_keys = s.get("keys") if "keys" in s else None
    facts.box_host_key = s.get("hostkey") or None
    jobs = [line.split() for line in s.get("jobs", "").splitlines() if len(line.split()) == 2]
    facts.running_jobs = tuple(name for name, state in jobs if state == "running")
    facts.job_count = len(jobs)
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
    """GPUs from `nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader,nounits`."""
    gpus, errors = [], []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4 and parts[0].isdigit():
            memory = int(parts[3]) if parts[3].isdigit() else 0
            gpus.append(Gpu(int(parts[0]), parts[1], parts[2], memory))
        elif line.strip():
            errors.append(line.strip())
    return tuple(gpus), "; ".join(errors)


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
