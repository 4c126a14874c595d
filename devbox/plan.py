"""Pure planning: (BoxSpec, Facts) -> preflight verdict and the Steps `up` must run.

No I/O here: everything is decided from facts gathered beforehand, so `--dry-run`
prints exactly what `up` would do, and every branch is unit-tested without a host.
"""
from __future__ import annotations

import posixpath
import shlex
import zlib
from dataclasses import dataclass, field
from typing import Callable

from devbox import __version__
from devbox.config import BoxSpec, gives_host_root, shares_into_home
from devbox.errors import ConfigError, DevboxError, HostUnreachable
from devbox.basetag import refuse_unworkable
from devbox.box import home_folders_argv, keys_writer_argv, secrets_writer_argv, seed_home_argv, volume_owner_argv
from devbox.boxenv import SECRETS_DIR, BoxEnv
from devbox.dotfiles import CopyDotfiles, Dotfiles
from devbox.facts import AUTHORIZED_KEYS_DIR, Facts, image_cuda, version_tuple
from devbox.placement import as_before, place_gpus
from devbox.steps import BuildImage, DockerStep, PullImage, ShellStep, Step, StreamImage, SwapBox, WriteKeys

BOX_SSH_PORT = 2222
PORT_RANGE = (20000, 29999)
MIN_FREE_KIB_DELIVER = 4 * 1024 * 1024   # room to build/load the devbox layers
MIN_FREE_KIB_RUN = 512 * 1024            # room to start a box at all


@dataclass
class Plan:
    spec: BoxSpec
    image_tag: str
    port: int
    spec_hash: str
    steps: list[Step]
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def changes(self) -> bool:
        return bool(self.steps)


class RunningJobs(DevboxError):
    """Re-creating the box would kill running jobs: needs --force."""

    exit_code = 1


def preflight(spec: BoxSpec, facts: Facts) -> None:
    """Raise HostUnreachable (exit 3) for the first thing that makes `up` impossible."""
    h = spec.host
    if facts.docker_version is None:
        raise HostUnreachable(
            f"{h}: Docker is not usable by the SSH user ({facts.docker_error or 'no answer'})",
            f"install Docker on {h} and add the SSH user to the docker group (sudo usermod -aG docker USER), then log in again",
        )
    need = MIN_FREE_KIB_DELIVER if not facts.image_present else MIN_FREE_KIB_RUN
    if facts.docker_root_free_kib is not None and facts.docker_root_free_kib < need:
        raise HostUnreachable(
            f"{h}: only {facts.docker_root_free_kib // 1024} MiB free for Docker images",
            f"free at least {need // 1024} MiB on {h} (docker system prune, or a bigger disk)",
        )
    if facts.missing_paths:
        raise HostUnreachable(
            f"{h}: host path {facts.missing_paths[0]} to mount does not exist",
            "create it on the host or drop it from `volumes`",
        )
    refuse_other_owner(spec, facts.box_labels)
    _preflight_host_paths(spec, facts)
    _preflight_sizes(spec, facts)
    if spec.wants_gpus and facts.host_checked:
        _preflight_gpus(spec, facts)
    _preflight_owner(spec, facts)


def needs_host_check(spec: BoxSpec, facts: Facts, image_tag: str) -> bool:
    """Whether `up` must ask the host's runtimes, disk and GPUs before planning.

    Only when it will deliver, create or re-create: a running box that matches its
    spec needs none, so a no-op `up` skips `docker info` (0.13 s) and nvidia-smi.
    """
    if facts.docker_version is None:
        return False  # preflight stops at Docker already
    if not facts.image_present or not facts.box_running:
        return True
    spec = as_before(spec, facts)
    return isinstance(spec.gpus, int) or not box_matches(facts, spec.spec_hash(choose_port(spec, facts), image_tag))


def box_matches(facts: Facts, spec_hash: str) -> bool:
    """The box on the host was made from this very spec (its label says so)."""
    return facts.box_labels.get("devbox.spec-hash") == spec_hash


def refuse_other_owner(spec: BoxSpec, labels: dict) -> None:
    """A box is its owner's: a config that names another owner for it (a typo, a copied table)
    would hand her home and workspace to someone else's keys."""
    held = labels.get("devbox.owner", "")
    if labels and held != spec.owner:
        raise ConfigError(f"{spec.box.name}: the box on {spec.host} is {held + chr(39) + 's' if held else 'the host' + chr(39) + 's own'} "
                          f"(its label), the config says {'owner = ' + repr(spec.owner) if spec.owner else 'no owner'}",
                          f"fix owner in devbox.toml; to hand the box over, `devbox down {spec.box.name} --purge` first "
                          "(its volumes are the old owner's data)")


def _preflight_host_paths(spec: BoxSpec, facts: Facts) -> None:
    """A host path that leads (through symlinks) to the Docker socket or a system folder is
    as dangerous as naming it: devbox.toml cannot see that, the host can."""
    if spec.allow_host_root_mounts:
        return
    for source, real in facts.resolved_paths.items():
        if real != source and gives_host_root(real):
            raise ConfigError(f"{spec.box.name}: host path {source} leads to {real}, which makes every key holder root on the host",
                              "mount a data folder instead; only if you mean it, set allow_host_root_mounts = true in devbox.toml")


def _preflight_sizes(spec: BoxSpec, facts: Facts) -> None:
    """A size no host memory can back is a typo (Docker takes shm_size = "100000g" without a word
    and mounts a 98 TB /dev/shm whose writes then fail at random): refuse it against the host's."""
    if not facts.host_memory:
        return
    host = f"{facts.host_memory / (1 << 30):.0f} GiB"
    for key, value in (("shm_size", spec.shm_size), ("memory", spec.memory)):
        if value not in ("auto", "") and size_bytes(value) > facts.host_memory:
            raise ConfigError(f"{spec.box.name}: {key} = \"{value}\" is more than the host's memory ({host})",
                              f'set {key} in devbox.toml to at most {facts.host_memory >> 30}g, or "auto"')


def _preflight_owner(spec: BoxSpec, facts: Facts) -> None:
    """Kept volumes belong to the uid:gid they were made for: a box of another user
    could not even write its home (it would restart forever), so refuse and say how."""
    wanted = f"{spec.uid}:{spec.gid}"
    if facts.volume_owner and facts.volume_owner != wanted:
        volume = spec.volume_name(spec.all_volumes()[0])
        raise DevboxError(
            f"{spec.box.name}: the box's volumes belong to uid:gid {facts.volume_owner}, the config now asks for {wanted}",
            f"set uid/gid back to {facts.volume_owner.replace(':', ' / ')} in devbox.toml, or copy your data out "
            f"and start afresh with `devbox down {spec.box.name} --purge` (this deletes {volume} and the other volumes)",
            exit_code=2,
        )


def _preflight_gpus(spec: BoxSpec, facts: Facts) -> None:
    h = spec.host
    if not facts.gpus:
        raise HostUnreachable(
            f"{h}: GPUs asked for but nvidia-smi found none ({facts.nvidia_smi_error or 'not installed'})",
            'install the NVIDIA driver on the host, or use gpus = "none" (playbook cpu)',
        )
    if isinstance(spec.gpus, tuple):
        _preflight_gpu_names(spec, facts)
    if "nvidia" not in facts.runtimes and not facts.cdi_nvidia:
        raise HostUnreachable(
            f"{h}: Docker has no NVIDIA runtime or CDI spec",
            "install nvidia-container-toolkit and run `nvidia-ctk runtime configure --runtime=docker`, then restart Docker",
        )
    refuse_unworkable(spec, facts)
    wanted = image_cuda(spec.base_image)
    if wanted and facts.driver_cuda and version_tuple(facts.driver_cuda) < version_tuple(wanted):
        raise HostUnreachable(
            f"{h}: driver {facts.gpus[0].driver} supports CUDA {facts.driver_cuda}, the image needs CUDA {wanted}",
            "upgrade the NVIDIA driver on the host, or choose a base_image built for an older CUDA",
        )


def _preflight_gpu_names(spec: BoxSpec, facts: Facts) -> None:
    """Each of `gpus` (an index or a GPU-… UUID) names a GPU the host has; a refusal lists them."""
    indices = {g.index for g in facts.gpus}
    uuids = {g.uuid.lower() for g in facts.gpus if g.uuid}
    for wanted in spec.gpus:
        if isinstance(wanted, int) and wanted not in indices:
            raise HostUnreachable(f"{spec.box.name}: GPU index {wanted} does not exist (host has {sorted(indices)})", "fix `gpus` in devbox.toml")
        if isinstance(wanted, str) and uuids and wanted.lower() not in uuids:
            have = ", ".join(f"{g.index}: {g.uuid}" for g in facts.gpus)
            raise HostUnreachable(f"{spec.box.name}: no GPU {wanted} on this host (it has {have})",
                                  "put one of those UUIDs (or an index) in `gpus` in devbox.toml")


def choose_port(spec: BoxSpec, facts: Facts) -> int:
    """The box's host port: configured, else the one it already has, else a stable free one."""
    return choose_ports(spec, facts, 1)[0]


def choose_ports(spec: BoxSpec, facts: Facts, count: int = 8) -> list[int]:
    """The port to use first, then free alternatives in case another program binds it
    between the gather and `docker start` (a configured port has no alternative)."""
    if spec.port:
        return [spec.port]
    existing = facts.box_labels.get("devbox.port")
    if existing and existing.isdigit():
        return [int(existing)]
    low, high = PORT_RANGE
    start = low + zlib.crc32(spec.host.encode()) % (high - low)
    ports = []
    for offset in range(high - low):
        port = low + (start - low + offset) % (high - low)
        if port not in facts.used_ports:
            ports.append(port)
            if len(ports) == count:
                break
    if not ports:
        raise HostUnreachable(f"{spec.box.name}: no free port in {low}-{high}", "set `port` in devbox.toml")
    return ports


def box_labels(spec: BoxSpec, port: int, image_tag: str, spec_hash: str, keyset: str) -> dict[str, str]:
    return {
        **owner_labels(spec),
        "devbox.spec-hash": spec_hash,
        "devbox.image": image_tag,
        "devbox.port": str(port),
        "devbox.user": spec.user,
        "devbox.gpus": spec.gpus if isinstance(spec.gpus, str) else ",".join(map(str, spec.gpus)),
        "devbox.base": spec.base_image,
        "devbox.keys": keyset,
        "devbox.version": __version__,
        **({"devbox.gpu-count": str(spec.gpu_count)} if spec.gpu_count else {}),
        **({"devbox.shared": "true"} if spec.shared else {}),
        **({"devbox.idle-stop": str(spec.idle_stop)} if spec.idle_stop else {}),
        **({"devbox.slurm.job": spec.slurm_job} if spec.slurm_job else {}),
    }


def owner_labels(spec: BoxSpec) -> dict[str, str]:
    """What every object of a box carries: which host and box it belongs to, and whose it is
    (`down --purge` and `status HOST` find a box's things by these, never by name patterns)."""
    return {"devbox.managed": "true", "devbox.host": spec.host, "devbox.box": spec.box.name,
            **({"devbox.owner": spec.owner} if spec.owner else {})}


def idle_args(spec: BoxSpec) -> list[str]:
    """`idle_stop`: the watcher in the box (as its user) stops it by ending with code 0, which
    `on-failure` leaves stopped; a crash still restarts. Without it, as ever: unless-stopped."""
    if not spec.idle_stop:
        return ["--restart", "unless-stopped"]
    return ["--restart", "on-failure", "--env", f"DEVBOX_IDLE_STOP={spec.idle_stop}",
            "--env", f"DEVBOX_IDLE_GPU_UTIL={spec.idle_gpu_util}"]


def gpu_args(spec: BoxSpec, facts: Facts) -> list[str]:
    if not spec.wants_gpus:
        return []
    if isinstance(spec.gpus, int):
        raise ValueError("a GPU count must be placed (devbox.placement) before planning")
    devices = "all" if spec.gpus == "all" else ",".join(map(str, spec.gpus))
    if "nvidia" in facts.runtimes:
        return ["--gpus", "all" if devices == "all" else f'"device={devices}"']
    return [arg for d in devices.split(",") for arg in ("--device", f"nvidia.com/gpu={d}")]


def memory_limit(spec: BoxSpec, facts: Facts) -> str:
    """`memory = "auto"`: the host's memory less max(2 GiB, 10%) (kept for the host's own
    sshd, Docker and page cache; GPU jobs need most of the rest), never under half of it."""
    if spec.memory != "auto":
        return spec.memory
    if not facts.host_memory:
        return ""
    total = facts.host_memory
    limit = max(total - max(2 << 30, total // 10), total // 2)
    return f"{limit // (1 << 20)}m"


def cpu_limit(spec: BoxSpec, facts: Facts) -> str:
    """`cpus = "auto"`: all CPUs but one when the host has more than two (the host's sshd
    and Docker stay responsive under a CPU-bound job), else all of them."""
    if spec.cpus != "auto":
        return spec.cpus
    if not facts.host_cpus:
        return ""
    return str(facts.host_cpus - 1 if facts.host_cpus > 2 else facts.host_cpus)


SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
MIN_SHM = 1 << 30


def size_bytes(text: str) -> int:
    """Docker's size words ("512m", "16g", "1048576") in bytes."""
    unit = text[-1:].lower() if text[-1:].isalpha() else ""
    return int(text[: len(text) - len(unit)]) * SIZE_UNITS[unit]


def shm_size(spec: BoxSpec, facts: Facts) -> str:
    """`shm_size = "auto"`: half the box's memory limit (half the host's memory without one),
    at least 1 GiB. Half is what Linux gives /dev/shm on a host; its pages count against the
    box's memory, so shared memory alone cannot exhaust it. Docker's default (64 MiB) is what
    crashes NCCL (`ncclShmOpen`) and DataLoader workers."""
    if spec.shm_size != "auto":
        return spec.shm_size
    limit = memory_limit(spec, facts)
    total = size_bytes(limit) if limit else facts.host_memory
    if not total:
        return "8g"   # nothing known of the host: the old fixed default
    return f"{max(total // 2, MIN_SHM) // (1 << 20)}m"


def memlock_ulimit(facts: Facts) -> tuple[str, str]:
    """`--ulimit memlock=…` for NCCL's pinned buffers, and a warning when it cannot be unlimited.

    Unlimited needs an engine that may raise its hard limit (CAP_SYS_RESOURCE) or has none;
    asking more than the engine's hard limit fails the start ("error setting rlimit type 8:
    operation not permitted"), so such a host gets its highest allowed value instead.
    """
    if facts.memlock_max is None or facts.memlock_max < 0:
        return "memlock=-1", ""
    value = facts.memlock_max
    return (f"memlock={value}:{value}",
            f"the engine's locked-memory limit is {value // 1024} KiB, not unlimited: the box gets that much "
            "(NCCL may be slower or fail to register buffers); raise LimitMEMLOCK=infinity for the Docker service on the host")


# CPU weight below Docker's default 1024: other containers on the host win a contended CPU.
CPU_SHARES = "512"


def run_args(spec: BoxSpec, facts: Facts, port: int, image_tag: str, labels: dict[str, str],
             name: str | None = None, verb: str = "run") -> list[str]:
    """`docker run` (or `create`) arguments: the run-time hardening every box gets.

    Beyond no root and no capabilities (CIS Docker Benchmark, section 5): its own network
    (5.30), memory and CPU limits (5.11, 5.12), AppArmor where the host has it (5.2), a
    health check (5.27, in the image). sshd in the container (5.7) is the product itself.
    """
    address = "127.0.0.1" if spec.expose == "loopback" else "0.0.0.0"
    args = [
        verb, *(["--detach"] if verb == "run" else []), "--name", name or spec.box_name, "--hostname", spec.box_name,
        *idle_args(spec), "--init", "--pull", "never",
        "--user", f"{spec.uid}:{spec.gid}",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        # exec: Docker's tmpfs is noexec by default, and VS Code's server, triton/torch.compile
        # kernels and pip builds run code from /tmp (home is exec-able anyway: no loss).
        "--read-only", "--tmpfs", "/tmp:rw,exec,nosuid,nodev,mode=1777",
        "--pids-limit", "8192",
        "--network", spec.network,
        "--publish", f"{address}:{port}:{BOX_SSH_PORT}",
        "--shm-size", shm_size(spec, facts),
        "--ulimit", memlock_ulimit(facts)[0],
        "--cpu-shares", CPU_SHARES,
    ]
    if facts.apparmor:
        args += ["--security-opt", "apparmor=docker-default"]
    if memory := memory_limit(spec, facts):
        args += ["--memory", memory]
    if cpus := cpu_limit(spec, facts):
        args += ["--cpus", cpus]
    for volume in spec.all_volumes():
        args += ["--mount", spec.mount(volume)]
    args += ["--mount", f"type=volume,source={spec.keys_volume},target={AUTHORIZED_KEYS_DIR},readonly"]
    args += ["--mount", f"type=volume,source={spec.secrets_volume},target={SECRETS_DIR},readonly"]
    args += gpu_args(spec, facts)
    for key, value in labels.items():
        args += ["--label", f"{key}={value}"]
    return args + [image_tag] + (["-o", "AllowAgentForwarding=yes"] if spec.forward_agent else [])


def volume_step(spec: BoxSpec, name: str, image_tag: str, shared: bool = False) -> ShellStep:
    """Create the volume (`docker volume create` of an existing one changes nothing) and
    give it to the box user, whatever its path (box.volume_owner_argv says how). A shared
    volume belongs to the host, not to the box that made it first."""
    owner = {"devbox.managed": "true", "devbox.host": spec.host, "devbox.shared": "true"} if shared else owner_labels(spec)
    labels = {**owner, "devbox.uid": spec.uid, "devbox.gid": spec.gid}
    create = ["docker", "volume", "create", *(a for k, v in labels.items() for a in ("--label", f"{k}={v}")), name]
    give = shlex.join(["docker", *volume_owner_argv(spec, image_tag, name)])
    script = f'{shlex.join(create)} >/dev/null && c=$({give}) && docker rm "$c" >/dev/null'
    return ShellStep("create_volume", f"ensure {'shared ' if shared else ''}volume {name} (the box user's)", script,
                     f"check the host's Docker can create volumes (`docker volume create {name}`)")


def network_step(spec: BoxSpec) -> ShellStep:
    net = shlex.quote(spec.network)
    labels = " ".join(f"--label {shlex.quote(f'{k}={v}')}" for k, v in owner_labels(spec).items())
    script = (f"docker network inspect {net} >/dev/null 2>&1 || docker network create --driver bridge "
              f"{labels} {net} >/dev/null")
    return ShellStep("create_network", f"ensure network {spec.network} (the box's own: boxes cannot reach each other)", script,
                     "Docker's address pools are full: remove unused networks (`docker network prune`) or add "
                     "default-address-pools to /etc/docker/daemon.json on the host")


def volume_names(spec: BoxSpec) -> list[str]:
    """Every Docker volume that is the box's own: home, the named `volumes` (unless they are
    folders on shared storage), the keys, the secrets (never a shared one)."""
    named = [] if spec.data_root else [spec.volume_name(v) for v in spec.all_volumes() if v.is_named and not v.shared]
    return named + [spec.keys_volume, spec.secrets_volume]


def data_folders_step(spec: BoxSpec, image_tag: str) -> ShellStep:
    """A box on shared storage (a Slurm box): its data_root (only its user may enter), a
    folder per named volume, and a new home seeded with the image's, as a new home volume is."""
    q = shlex.quote
    home = spec.volume_name(spec.all_volumes()[0])
    folders = [spec.volume_name(v) for v in spec.all_volumes() if v.is_named]
    seed = shlex.join(["docker", *seed_home_argv(spec, image_tag, home)])
    script = (f"mkdir -p {q(spec.data_root)} && chmod 700 {q(spec.data_root)} && mkdir -p {' '.join(map(q, folders))} && "
              f'if [ ! -e {q(home + "/.devbox")} ]; then {seed} >/dev/null; fi')
    return ShellStep("data_folders", f"ensure {', '.join(folders)} on shared storage (the box user's; kept across jobs and nodes)",
                     script, f"check that {spec.data_root} can be made by your cluster user on the node (shared storage mounted?)")


def home_folders(spec: BoxSpec) -> list[str]:
    """The folders, relative to the home, that hold shared caches mounted inside it."""
    parents = {posixpath.dirname(v.target) for v in spec.volumes if shares_into_home(spec, v)}
    return sorted(posixpath.relpath(p, spec.home) for p in parents if p != spec.home)


def shared_volume_names(spec: BoxSpec) -> list[str]:
    return [] if spec.data_root else [spec.volume_name(v) for v in spec.volumes if v.shared]


def env_differs(facts: Facts, box_env: BoxEnv) -> bool:
    """The running box's secrets volume holds other values (compared by digest only)."""
    return facts.box_env is None or facts.box_env.digest != box_env.digest


def secrets_step(spec: BoxSpec, image_tag: str, box_env: BoxEnv) -> DockerStep:
    """Rewrite the secrets volume live: the values go on the writer's stdin, never its argv."""
    return DockerStep("sync_secrets", f"write {box_env.describe()} to {spec.secrets_volume} (read-only in the box)",
                      tuple(secrets_writer_argv(spec, image_tag)), box_env.payload(), "env and secrets, by name: "
                      + (", ".join(name for name, _ in (*box_env.env, *box_env.secrets)) or "none"))


def delivery_step(spec: BoxSpec, facts: Facts, image_tag: str, local_image: bool) -> Step | None:
    """The cheapest way to get the image there; never sends a layer the host has.

    auto: a host with the base builds from the few-KB context; a host without it gets
    the layers it lacks streamed from this machine when this machine has the image
    (no registry or network needed on the host), else builds and pulls the base itself.
    With a `registry` (and delivery auto or registry…), the image leaves here once and
    the host pulls it; "registry,stream" streams to a host the registry fails.
    """
    if facts.image_present:
        return None
    streaming = StreamImage("stream_image", f"send image {image_tag}: only the layers the host lacks, over SSH", spec, image_tag)
    if spec.registry and spec.delivery in ("auto", "registry", "registry,stream"):
        fallback = streaming if spec.delivery == "registry,stream" else None
        return PullImage("pull_image", f"push image {image_tag} to {spec.registry} from this machine (once for every host), "
                         "the host pulls it by digest" + ("; if that fails, send it over SSH instead" if fallback else ""),
                         spec, image_tag, fallback)
    stream = spec.delivery == "stream" or (spec.delivery == "auto" and not facts.base_present and local_image)
    if stream:
        if not local_image:
            raise DevboxError(f"delivery = stream but {image_tag} is not on this machine",
                              f"build it first: {spec.image.build_command()}", exit_code=2)
        return streaming
    how = "on the host from the build context" + ("" if facts.base_present else f" (the host pulls {spec.base_image})")
    fallback = streaming if spec.delivery == "auto" and local_image else None   # for a build stuck on a mirror
    how += f"; if it prints nothing for {spec.build_stall} s, send it from this machine instead" if fallback else ""
    return BuildImage("build_image", f"build image {image_tag} {how}", spec, image_tag, fallback)


def plan_up(
    spec: BoxSpec,
    facts: Facts,
    image_tag: str,
    authorized_keys: str,
    keyset: str,
    force: bool = False,
    local_image: bool = False,
    restart: bool = False,
    read_keys: Callable[[], str] | None = None,
    box_env: BoxEnv | None = None,
    dotfiles: Dotfiles | None = None,
) -> Plan:
    """Every step needed to bring the host to `spec`; none when it already matches.
    `box_env`: the env and secrets read on this machine; `dotfiles`: copied into a new box."""
    if needs_host_check(spec, facts, image_tag) and not facts.host_checked:
        raise ValueError("plan_up needs the host checks (facts.host_checked) to create anything")
    preflight(spec, facts)
    spec, gpu_warnings = place_gpus(spec, facts)
    port = choose_port(spec, facts)
    spec_hash = spec.spec_hash(port, image_tag)
    steps: list[Step] = []
    notes: list[str] = []
    deliver = delivery_step(spec, facts, image_tag, local_image)
    if deliver:
        steps.append(deliver)
    box = facts.box
    recreate = box is not None and (restart or not box_matches(facts, spec_hash))
    if recreate:
        if facts.running_jobs and not force:
            raise RunningJobs(
                f"{spec.box.name}: the box spec changed and re-creating it would stop running jobs: {', '.join(facts.running_jobs)}",
                "wait for them, stop them with `devbox stop`, or pass --force (their logs are kept)",
            )
    if box is None or recreate:
        if spec.data_root:
            steps.append(data_folders_step(spec, image_tag))
        steps += [volume_step(spec, name, image_tag) for name in volume_names(spec)]
        steps += [volume_step(spec, name, image_tag, shared=True) for name in shared_volume_names(spec)]
        if folders := home_folders(spec):
            steps.append(DockerStep("home_folders", f"make {', '.join('~/' + f for f in folders)} in the home as {spec.user} "
                                    "(for shared caches mounted there)", tuple(home_folders_argv(spec, image_tag, folders))))
        steps.append(network_step(spec))
    if box is None or recreate or not facts.box_running or facts.authorized_keys != authorized_keys.strip():
        steps.append(WriteKeys("sync_keys", f"install {authorized_keys.count(chr(10)) - 1} team key(s) in {spec.keys_volume} "
                               "(read-only in the box)", tuple(keys_writer_argv(spec, image_tag)), authorized_keys, read_keys))
    if box_env is not None and (box is None or recreate or not facts.box_running or env_differs(facts, box_env)):
        steps.append(secrets_step(spec, image_tag, box_env))
    if box is None or recreate:
        ports = choose_ports(spec, facts)

        def argv_for(chosen: int, name: str) -> list[str]:
            chosen_hash = spec.spec_hash(chosen, image_tag)
            return run_args(spec, facts, chosen, image_tag, box_labels(spec, chosen, image_tag, chosen_hash, keyset), name, "create")

        why = "its spec changed" if not restart else "asked to restart"
        what = (f"re-create box {spec.box_name} ({why}): the new one starts beside it and replaces it only once its sshd "
                "answers; volumes and host key are kept") if recreate else f"start box {spec.box_name}"
        gpus = "" if not spec.wants_gpus else f" with GPUs {spec.gpus if isinstance(spec.gpus, str) else ','.join(map(str, spec.gpus))}"
        steps.append(SwapBox("create_box", f"{what} on 127.0.0.1:{port} as {spec.user} ({spec.uid}:{spec.gid}){gpus}",
                             spec, tuple(ports), argv_for, recreate))
    elif not facts.box_running:
        steps.append(DockerStep("start_box", f"start the stopped box {spec.box_name}", ("start", spec.box_name)))
    if dotfiles is not None and box is None:
        steps.append(CopyDotfiles("copy_dotfiles", f"copy dotfiles from {dotfiles.folder} into {spec.home} "
                                  "(files changed in the box are kept)", spec, dotfiles))
    warnings = [f"{spec.box.name}: {warning}"] if (warning := memlock_ulimit(facts)[1]) and (box is None or recreate) else []
    warnings += gpu_warnings
    if not steps:
        notes.append(f"box {spec.box_name} runs spec {spec_hash} with image {image_tag} and the team's keys: nothing to do")
    return Plan(spec, image_tag, port, spec_hash, steps, notes, warnings)
