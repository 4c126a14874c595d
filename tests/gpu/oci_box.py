"""devbox's own `docker create` arguments as an OCI runtime config (runc), for GPU machines
without Docker: the box started with the same hardening devbox asks of Docker.

Pure: `translate(argv, image, machine)` reads the argv devbox.plan.run_args made, flag by
flag, and refuses any flag it does not know, so a new flag in run_args fails here instead of
being dropped. What Docker adds on its own (default mounts, masked /proc paths, docker-init
for --init, named volumes) and what the NVIDIA container toolkit adds for `--gpus` (device
nodes, the driver's libraries and nvidia-smi) is added the same way. Where nothing here can
do what Docker does, `Box.notes` says so (they go into the evidence).
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field

BOOLEAN_FLAGS = {"--detach", "--init", "--read-only", "--rm", "--interactive", "-i"}
DEFAULT_DEVICES = [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 1), (5, 2), (136, None)]  # null zero full random urandom tty console ptmx pts
# Docker's defaults (moby oci/defaults.go) for a container that is not privileged.
MASKED = ["/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
          "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap"]
READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
INIT = "/sbin/docker-init"
LIB_DIR = "/usr/lib/x86_64-linux-gnu"


class UnknownFlag(ValueError):
    """run_args gave a flag this translation does not know: teach it, never drop it."""


@dataclass(frozen=True)
class Machine:
    """What the GPU machine has, read by the caller (the only side effects are there)."""

    gpus: tuple[tuple[str, str, int, str], ...]   # (index, uuid, device minor, /proc/driver/nvidia/gpus/BUS) of each GPU
    control_nodes: dict[str, tuple[int, int]]   # /dev/nvidiactl, /dev/nvidia-uvm, ... -> (major, minor)
    gpu_major: int                              # /dev/nvidiaN's major number
    driver_files: tuple[tuple[str, str], ...]   # (path on the machine, path in the box)
    volumes: str                                # where named volumes live (one folder each)
    state: str                                  # where /etc/hostname, /etc/hosts are written
    init: str                                   # Docker's docker-init (tini) on the machine


@dataclass
class Box:
    name: str
    config: dict
    publish: list[tuple[str, int, int]] = field(default_factory=list)    # (host address, host port, box port)
    named_volumes: list[tuple[str, str]] = field(default_factory=list)    # (volume, target in the box)
    files: dict[str, str] = field(default_factory=dict)                   # state file -> content
    notes: list[str] = field(default_factory=list)


def parse(argv: list[str]) -> tuple[list[tuple[str, str | None]], str, list[str]]:
    """(flags in order, image, command after it) of `create|run [FLAGS] IMAGE [CMD...]`."""
    args = argv[1:] if argv and argv[0] in ("create", "run") else list(argv)
    flags: list[tuple[str, str | None]] = []
    i = 0
    while i < len(args) and args[i].startswith("-"):
        flag = args[i]
        if "=" in flag and flag.startswith("--"):
            name, value = flag.split("=", 1)
            flags.append((name, value))
        elif flag in BOOLEAN_FLAGS:
            flags.append((flag, None))
        else:
            flags.append((flag, args[i + 1]))
            i += 1
        i += 1
    if i >= len(args):
        raise UnknownFlag("no image in the argv")
    return flags, args[i], args[i + 1:]


def size_bytes(text: str) -> int:
    from devbox.plan import size_bytes as docker_size
    return docker_size(text)


def mount_options(text: str) -> dict[str, str]:
    """`type=bind,source=/a,target=/b,readonly` -> {"type": "bind", ..., "readonly": ""}."""
    return dict((part.split("=", 1) + [""])[:2] for part in text.split(","))


def gpu_selection(value: str, machine: Machine) -> list[tuple[str, str, int]]:
    """`--gpus all` or `--gpus '"device=1,GPU-…"'`: the GPUs the toolkit would give the box."""
    value = value.strip('"')
    if value == "all":
        return list(machine.gpus)
    if not value.startswith("device="):
        raise UnknownFlag(f"--gpus {value!r}: only all and device=LIST are translated")
    wanted = value[len("device="):].split(",")
    chosen = [g for g in machine.gpus if g[0] in wanted or g[1] in wanted]
    if len(chosen) != len(wanted):
        raise UnknownFlag(f"--gpus {value}: the machine has {[g[:2] for g in machine.gpus]}")
    return chosen


def translate(argv: list[str], image: dict, machine: Machine, seccomp: dict | None = None) -> Box:
    """The OCI config.json (and what goes beside it) for devbox's `docker create` argv;
    `image` is the image's config (Env, Entrypoint, Cmd, User, WorkingDir), `seccomp` the
    filter Docker gives such a box (docker_spec.py), None for none. HOME is runc's to set, from
    the image's /etc/passwd, as under Docker."""
    flags, _, command = parse(argv)
    env = dict(e.split("=", 1) for e in image.get("Env") or [])
    process = {"terminal": False, "user": {"uid": 0, "gid": 0}, "cwd": image.get("WorkingDir") or "/",
               "capabilities": {k: [] for k in ("bounding", "effective", "inheritable", "permitted", "ambient")},
               "noNewPrivileges": False, "rlimits": []}
    caps_dropped = False
    mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro", "nosuid", "noexec", "nodev"]},
    ]
    shm = 64 << 20   # Docker's default
    linux: dict = {"namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "cgroup")],
                   "devices": [], "resources": {"devices": [{"allow": False, "access": "rwm"}]},
                   "maskedPaths": list(MASKED), "readonlyPaths": list(READONLY)}
    box = Box("", {})
    hostname, root_readonly, init, labels = "", False, False, {}
    for flag, value in flags:
        if flag == "--name":
            box.name = value
        elif flag == "--hostname":
            hostname = value
        elif flag in ("--restart", "--pull", "--detach"):
            box.notes.append(f"{flag} {value or ''}: a Docker daemon's policy, nothing in the container".replace("  ", " "))
        elif flag == "--init":
            init = True
        elif flag == "--user":
            uid, gid = value.split(":")
            process["user"] = {"uid": int(uid), "gid": int(gid), "additionalGids": [int(gid)]}
        elif flag == "--cap-drop":
            if value != "ALL":
                raise UnknownFlag(f"--cap-drop {value}: only ALL is translated")
            caps_dropped = True
        elif flag == "--security-opt":
            if value == "no-new-privileges":
                process["noNewPrivileges"] = True
            elif value.startswith("apparmor="):
                process["apparmorProfile"] = value.split("=", 1)[1]
            else:
                raise UnknownFlag(f"--security-opt {value}")
        elif flag == "--read-only":
            root_readonly = True
        elif flag == "--tmpfs":
            target, _, options = value.partition(":")
            opts = options.split(",") if options else ["rw", "noexec", "nosuid", "nodev"]
            mounts.append({"destination": target, "type": "tmpfs", "source": "tmpfs", "options": opts})
        elif flag == "--pids-limit":
            linux["resources"]["pids"] = {"limit": int(value)}
        elif flag == "--network":
            linux["namespaces"].append({"type": "network"})
            # Docker's own, for a container with its own network namespace.
            linux["sysctl"] = {"net.ipv4.ip_unprivileged_port_start": "0", "net.ipv4.ping_group_range": "0 2147483647"}
            box.notes.append(f"--network {value}: the box's own network namespace with loopback only (a bridge needs "
                             "`ip`, which the machine lacks); its port is published by a proxy, as docker-proxy does")
        elif flag == "--publish":
            address, host_port, box_port = value.rsplit(":", 2)
            box.publish.append((address, int(host_port), int(box_port)))
        elif flag == "--shm-size":
            shm = size_bytes(value)
        elif flag == "--ulimit":
            name, _, limits = value.partition("=")
            soft, _, hard = limits.partition(":")
            top = 2**64 - 1
            process["rlimits"].append({"type": f"RLIMIT_{name.upper()}", "soft": top if soft == "-1" else int(soft),
                                       "hard": top if (hard or soft) == "-1" else int(hard or soft)})
        elif flag == "--cpu-shares":
            linux["resources"].setdefault("cpu", {})["shares"] = int(value)
        elif flag == "--cpus":
            linux["resources"].setdefault("cpu", {}).update(period=100000, quota=int(float(value) * 100000))
        elif flag == "--memory":
            linux["resources"]["memory"] = {"limit": size_bytes(value)}
            box.notes.append("--memory: no swap allowance (Docker adds one of the same size where the kernel "
                             "accounts swap; whether this one does is not known here)")
        elif flag == "--mount":
            opts = mount_options(value)
            kind, source, target = opts.get("type"), opts.get("source") or opts.get("src"), opts.get("target") or opts.get("dst")
            if kind == "volume":
                box.named_volumes.append((source, target))
                source = f"{machine.volumes}/{source}"
            elif kind != "bind":
                raise UnknownFlag(f"--mount type={kind}")
            ro = "readonly" in opts or opts.get("ro") == "true"
            mounts.append({"destination": target, "type": "bind", "source": source,
                           "options": ["rbind", "rprivate", "ro" if ro else "rw"]})
        elif flag == "--gpus":
            chosen = gpu_selection(value, machine)
            nodes = dict(machine.control_nodes)
            nodes.update({f"/dev/nvidia{g[2]}": (machine.gpu_major, g[2]) for g in chosen})
            # As the toolkit does: the driver's /proc entries of the GPUs not given are hidden.
            linux["maskedPaths"] += [g[3] for g in machine.gpus if g not in chosen and g[3]]
            for path, (major, minor) in sorted(nodes.items()):
                linux["devices"].append({"path": path, "type": "c", "major": major, "minor": minor, "fileMode": 0o666, "uid": 0, "gid": 0})
                linux["resources"]["devices"].append({"allow": True, "type": "c", "major": major, "minor": minor, "access": "rwm"})
            for source, target in machine.driver_files:
                mounts.append({"destination": target, "type": "bind", "source": source, "options": ["rbind", "rprivate", "ro", "nosuid", "nodev"]})
            env["NVIDIA_VISIBLE_DEVICES"] = ",".join(g[1] for g in chosen)
        elif flag == "--label":
            key, _, val = value.partition("=")
            labels[key] = val
        elif flag in ("--env", "-e"):
            key, sep, val = value.partition("=")
            if not sep:   # `--env NAME` copies the docker client's own variable: nothing run_args gives
                raise UnknownFlag(f"--env {value}: only NAME=VALUE is translated")
            env[key] = val
        else:
            raise UnknownFlag(f"{flag} {value or ''}".strip())
    if not caps_dropped:
        raise UnknownFlag("no --cap-drop ALL: Docker's default capability set is not translated")
    for major, minor in DEFAULT_DEVICES:
        linux["resources"]["devices"].append({"allow": True, "type": "c", "major": major, **({} if minor is None else {"minor": minor}),
                                              "access": "rwm"})
    mounts.append({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                   "options": ["nosuid", "noexec", "nodev", "mode=1777", f"size={shm}"]})
    # Docker binds these from the container's folder, read-only under --read-only.
    box.files = {"hostname": f"{hostname}\n", "hosts": f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"}
    for name in ("hostname", "hosts"):
        mounts.append({"destination": f"/etc/{name}", "type": "bind", "source": f"{machine.state}/{name}",
                       "options": ["rbind", "rprivate", "ro" if root_readonly else "rw"]})
    mounts.append({"destination": "/etc/resolv.conf", "type": "bind", "source": "/etc/resolv.conf", "options": ["rbind", "rprivate", "ro"]})
    entrypoint = (image.get("Entrypoint") or []) + (command or image.get("Cmd") or [])
    if init:
        mounts.append({"destination": INIT, "type": "bind", "source": machine.init, "options": ["rbind", "rprivate", "ro"]})
        entrypoint = [INIT, "--", *entrypoint]
    process["args"] = entrypoint
    if image.get("User") and process["user"]["uid"] == 0:
        raise UnknownFlag("no --user: the image's USER is not translated")
    env["HOSTNAME"] = hostname
    process["env"] = [f"{k}={v}" for k, v in env.items()]
    box.config = {
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": "rootfs", "readonly": root_readonly},
        "hostname": hostname,
        "mounts": mounts,
        "linux": linux,
        "annotations": {**labels, "devbox.run_args": shlex.join(argv)},
    }
    if image.get("Healthcheck"):
        box.notes.append("HEALTHCHECK: run by the Docker daemon, so not here (nothing in the box depends on it)")
    if seccomp:
        linux["seccomp"] = seccomp
        named = sum(len(r.get("names", [])) for r in seccomp.get("syscalls", []))
        box.notes.append(f"seccomp: the filter this workplace's Docker gave such a box (default {seccomp.get('defaultAction')}, "
                         f"{named} system calls named)")
    else:
        box.notes.append("seccomp: none (no filter taken from Docker): the box is less confined here than under "
                         "Docker, never more; no check depends on it")
    return box


def inspect_view(argv: list[str]) -> dict:
    """The part of `docker inspect` that verify's expectations read (HostConfig, labels)."""
    flags, image, _ = parse(argv)
    host_config: dict = {"Ulimits": []}
    labels = {}
    for flag, value in flags:
        if flag == "--ulimit":
            name, _, limits = value.partition("=")
            soft, _, hard = limits.partition(":")
            host_config["Ulimits"].append({"Name": name, "Soft": int(soft), "Hard": int(hard or soft)})
        elif flag == "--shm-size":
            host_config["ShmSize"] = size_bytes(value)
        elif flag == "--label":
            key, _, val = value.partition("=")
            labels[key] = val
    return {"HostConfig": host_config, "Config": {"Image": image, "Labels": labels}}
