"""The built-in local test host: fake GPU hosts that are real OpenSSH servers.

Each fake host is an `sshd` (run as root, like a real host's) listening on its own
loopback address with its own host key, letting in one key-only user who is in the
`docker` group. They share this machine's Docker engine. A "laptop" is a temporary
HOME whose ~/.ssh/config names the hosts with absolute paths (OpenSSH expands `~`
from the passwd entry, not $HOME, so nothing here may rely on `~`).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

OPS_USER = "devbox-ops"          # in the docker group
NODOCKER_USER = "devbox-nodocker"  # not in the docker group: preflight must refuse
BASE_IMAGE = os.environ.get("DEVBOX_TEST_BASE", "local/debian:bookworm")
SSHD = "/usr/sbin/sshd"
UNREACHABLE = "unreachable-host"


def have(cmd: str) -> bool:
    return shutil.which(cmd) is not None or Path(f"/usr/sbin/{cmd}").exists()


def docker_ok() -> bool:
    return have("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0


def testbed_unavailable_reason() -> str | None:
    """Why the real test bed cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "the test bed starts sshd and makes users: run as root (CI does)"
    if not Path(SSHD).exists():
        return "openssh-server is not installed (make setup installs it)"
    if not docker_ok():
        return "no Docker engine answers `docker info` (make setup starts dockerd)"
    if subprocess.run(["docker", "image", "inspect", BASE_IMAGE], capture_output=True).returncode != 0:
        return f"local base image {BASE_IMAGE} missing (make setup builds it)"
    return None


def ensure_user(name: str, docker_group: bool) -> None:
    if subprocess.run(["id", name], capture_output=True).returncode != 0:
        groups = ["-G", "docker"] if docker_group else []
        subprocess.run(["useradd", "-m", "-s", "/bin/bash", *groups, name], check=True)
    # UsePAM no refuses locked accounts ("!"), even for keys; "*" = no password, not locked.
    subprocess.run(["usermod", "-p", "*", name], check=True)


def free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def keygen(path: Path, comment: str = "devbox-test") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)
    return path


@dataclass
class FakeHost:
    """One fake GPU host: a real sshd on `address:port`."""

    name: str
    address: str
    port: int
    user: str
    host_key: Path
    process: subprocess.Popen | None = None

    def host_key_line(self) -> str:
        key = Path(str(self.host_key) + ".pub").read_text().split()
        name = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
        return f"{name} {key[0]} {key[1]}"

    def config_block(self, identity: Path, known_hosts: Path, alias: str | None = None, route: str = "") -> str:
        """The laptop's Host block; `route` adds e.g. a ProxyJump or ProxyCommand line."""
        return (
            f"Host {alias or self.name}\n    HostName {self.address}\n    Port {self.port}\n"
            f"    User {self.user}\n    IdentityFile {identity}\n    IdentitiesOnly yes\n"
            f"    UserKnownHostsFile {known_hosts}\n    StrictHostKeyChecking yes\n"
            + (f"    {route}\n" if route else "") + "\n"
        )

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def fake_driver(hostdir: Path) -> str:
    """A bin dir whose nvidia-smi replays output recorded on a real H100 host: the host
    then has a "driver" but Docker has no NVIDIA runtime, which preflight must refuse.

    `-q -x` replays hostdir/smi-q.xml when a test wrote one (the recording with a real
    process's PID in it), else the recording itself; each query answers as recorded.
    A test makes the driver misbehave (hang, print escapes) with an executable
    hostdir/nvidia-smi-override, which then answers every call instead."""
    bindir = hostdir / "bin"
    bindir.mkdir(mode=0o755)
    script = bindir / "nvidia-smi"
    answers = {"*compute_cap*": "nvidia-smi-query-gpu-h100.csv", "*memory.used*": "nvidia-smi-query-memory-h100.csv",
               "*--query-gpu*": "nvidia-smi-query-h100.csv"}
    cases = "".join(f"{pattern}) exec cat {FIXTURES / name};; " for pattern, name in answers.items())
    script.write_text(
        f'#!/bin/sh\n[ -x {hostdir / "nvidia-smi-override"} ] && exec {hostdir / "nvidia-smi-override"} "$@"\n'
        f'case "$*" in {cases}'
        f'"-q -x") f={hostdir / "smi-q.xml"}; [ -f "$f" ] || f={FIXTURES / "nvidia-smi-q-h100.xml"}; exec cat "$f";; '
        f'*) exec cat {FIXTURES / "nvidia-smi-h100.txt"};; esac\n'
    )
    script.chmod(0o755)
    return f"SetEnv PATH={bindir}:/usr/local/bin:/usr/bin:/bin\n"


def local_facts(spec, sections: list[str]):
    """What devbox's questions learn of this machine when asked here (the bed's hosts share
    its engine): e.g. ["memlock"], the most locked memory this dockerd may give a box."""
    from devbox.facts import SECTION, ask, parse_facts

    script = "\n".join([SECTION, *ask(spec, "", sections)])
    return parse_facts(subprocess.run(["sh", "-c", script], capture_output=True, text=True).stdout)


def start_fake_host(name: str, index: int, workdir: Path, authorized: Path, user: str = OPS_USER, detach: bool = False,
                    extra: str = "") -> FakeHost:
    """Start sshd for one host on 127.0.0.(10+index), key-only, like a hardened real host."""
    address = f"127.0.0.{10 + index}"
    port = free_port(address)
    hostdir = workdir / name
    hostdir.mkdir(mode=0o755, parents=True)
    extra += fake_driver(hostdir) if name.startswith("gpu-noruntime") else ""
    host_key = write_sshd_config(name, hostdir, address, port, authorized, extra)
    process = launch_sshd(hostdir, address, port, detach)
    return FakeHost(name, address, port, user, host_key, process)


def write_sshd_config(name: str, hostdir: Path, address: str, port: int, authorized: Path, extra: str = "") -> Path:
    """A hardened host's sshd_config (key-only, no root) in hostdir; returns its host key."""
    host_key = keygen(hostdir / "ssh_host_ed25519_key", f"{name}-host-key")
    (hostdir / "sshd_config").write_text(
        f"ListenAddress {address}:{port}\nHostKey {host_key}\nPidFile none\nUsePAM no\n"
        f"AuthorizedKeysFile {authorized}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        f"PermitRootLogin no\nAllowTcpForwarding yes\nAllowUsers {OPS_USER} {NODOCKER_USER}\n"
        f"MaxStartups 200:30:400\nMaxSessions 100\nLogLevel VERBOSE\n" + extra
    )
    return host_key


def launch_sshd(hostdir: Path, address: str, port: int, detach: bool = False) -> subprocess.Popen:
    """Run the sshd configured in hostdir (again, for the demo) and wait until it listens."""
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    log = open(hostdir / "sshd.log", "a")
    process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(hostdir / "sshd_config")], stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=detach)
    _wait_listening(address, port, process, hostdir / "sshd.log")
    return process


def _wait_listening(address: str, port: int, process: subprocess.Popen, log: Path) -> None:
    for _ in range(100):
        if process.poll() is not None:
            raise RuntimeError(f"fake sshd exited: {log.read_text()[-500:]}")
        try:
            socket.create_connection((address, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"fake sshd on {address}:{port} never listened")


@dataclass
class TestBed:
    """The fake hosts plus the key and authorized_keys they share."""

    workdir: Path
    identity: Path
    hosts: dict[str, FakeHost] = field(default_factory=dict)

    def stop(self) -> None:
        for host in self.hosts.values():
            host.stop()


def start_testbed(workdir: Path, names: list[str], detach: bool = False) -> TestBed:
    ensure_user(OPS_USER, docker_group=True)
    ensure_user(NODOCKER_USER, docker_group=False)
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o755)
    identity = keygen(workdir / "laptop_ed25519", "laptop")
    authorized = workdir / "authorized_keys"
    shutil.copy(str(identity) + ".pub", authorized)
    os.chmod(authorized, 0o644)
    bed = TestBed(workdir, identity)
    for index, name in enumerate(names):
        user = NODOCKER_USER if name.startswith("nodocker") else OPS_USER
        bed.hosts[name] = start_fake_host(name, index, workdir, authorized, user, detach)
    return bed


@dataclass
class Laptop:
    """A user's machine: HOME with ~/.ssh/{config,known_hosts,id_ed25519}."""

    home: Path

    @property
    def ssh_config(self) -> Path:
        return self.home / ".ssh" / "config"

    @property
    def identity(self) -> Path:
        return self.home / ".ssh" / "id_ed25519"

    def ssh(self, alias: str, *command: str, timeout: float = 30, extra: list[str] | None = None) -> subprocess.CompletedProcess:
        """The OpenSSH client with this laptop's config, as VS Code Remote-SSH runs it."""
        argv = ["ssh", "-F", str(self.ssh_config), "-o", "BatchMode=yes", *(extra or []), alias, *command]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def make_laptop(home: Path, bed: TestBed, extra_hosts: dict[str, FakeHost] | None = None) -> Laptop:
    ssh = home / ".ssh"
    ssh.mkdir(mode=0o700, parents=True)
    shutil.copy(bed.identity, ssh / "id_ed25519")
    shutil.copy(str(bed.identity) + ".pub", ssh / "id_ed25519.pub")
    os.chmod(ssh / "id_ed25519", 0o600)
    known = ssh / "known_hosts"
    hosts = {**bed.hosts, **(extra_hosts or {})}
    known.write_text("".join(h.host_key_line() + "\n" for h in hosts.values()))
    # A host nobody listens for: a port just bound and released on loopback.
    ghost = FakeHost(UNREACHABLE, "127.0.0.1", free_port("127.0.0.1"), OPS_USER, Path("/nonexistent"))
    blocks = [h.config_block(ssh / "id_ed25519", known) for h in [*hosts.values(), ghost]]
    (ssh / "config").write_text("".join(blocks))
    return Laptop(home)


# ---------------------------------------------------------------- a host with its own engine


@dataclass
class SecondEngine:
    """A second dockerd (own data root, socket and bridge): a host that shares no image
    with this machine, so delivery has to cross SSH for real."""

    root: Path
    socket: Path
    bridge: str
    process: subprocess.Popen | None = None

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"

    def docker(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["docker", "-H", self.docker_host, *args], capture_output=True, text=True, **kw)

    def remove_containers(self, label: str | None = None) -> None:
        """Remove this engine's containers (all, or those with `label`) and their volumes."""
        filters = ["--filter", f"label={label}"] if label else []
        ids = self.docker("ps", "-aq", *filters).stdout.split()
        if ids:
            self.docker("rm", "-f", *ids)
        vols = self.docker("volume", "ls", "-q", *filters).stdout.split()
        if vols:
            self.docker("volume", "rm", "-f", *vols)

    def _empty(self) -> None:
        """Its containers, then its networks (their bridges live in this machine's namespace
        and outlive the engine, each holding one of the main engine's ~30 address pools)."""
        ids = self.docker("ps", "-aq", timeout=60).stdout.split()
        if ids:
            self.docker("rm", "-f", *ids, timeout=120)
        self.docker("network", "prune", "-f", timeout=60)

    def stop(self) -> None:
        try:
            self._empty()
        except subprocess.TimeoutExpired:   # a hung engine: kill it, do not wait forever
            if self.process:
                self.process.kill()
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


def start_second_engine(root: Path, seed_images: list[str], address_pool: str = "", kind: int = 0,
                        extra_args: tuple[str, ...] = (), path_prefix: str = "") -> SecondEngine:
    """Start it, then copy `seed_images` (e.g. the base) into it, as a host that has them.
    `address_pool` (e.g. "10.150.0.0/16"): room for more than Docker's default ~30 user
    networks, one per box, for a fleet of boxes on one engine. `kind` (0-9) tells apart
    the default bridges of several second engines of one test run; `path_prefix` goes in
    front of dockerd's PATH (where it finds helpers such as the NVIDIA hook)."""
    root.chmod(0o755)  # the host user reaches the socket through it
    tag = f"{os.getpid() % 100000}{kind or ''}"
    engine = SecondEngine(root, root / "docker.sock", f"dbx{tag}")
    subnet = 16 + os.getpid() % 200
    subprocess.run(["ip", "link", "add", engine.bridge, "type", "bridge"], check=True)
    subprocess.run(["ip", "addr", "add", f"172.{29 + kind}.{subnet}.1/24", "dev", engine.bridge], check=True)
    subprocess.run(["ip", "link", "set", engine.bridge, "up"], check=True)
    log = open(root / "dockerd.log", "w")
    env = {**os.environ, "PATH": f"{path_prefix}:{os.environ['PATH']}"} if path_prefix else None
    engine.process = subprocess.Popen(
        ["dockerd", "--data-root", str(root / "data"), "--exec-root", str(root / "exec"), "--pidfile", str(root / "docker.pid"),
         "-H", engine.docker_host, "--bridge", engine.bridge, "--iptables=false", "--ip6tables=false", "--group", "docker",
         *(["--default-address-pool", f"base={address_pool},size=24"] if address_pool else []), *extra_args],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    for _ in range(120):
        if engine.docker("info").returncode == 0:
            break
        time.sleep(0.25)
    else:
        engine.stop()
        raise RuntimeError(f"second dockerd did not start: {(root / 'dockerd.log').read_text()[-500:]}")
    seed(engine.docker_host, seed_images)
    return engine


def seed(docker_host: str | list[str], images: list[str]) -> None:
    """Copy images from this machine's engine into others (docker save | docker -H … load),
    in one stream: layers the images share (an image and its base) cross once, and several
    engines load one save side by side."""
    if not images:
        return
    hosts = [docker_host] if isinstance(docker_host, str) else docker_host
    save = subprocess.Popen(["docker", "save", *images], stdout=subprocess.PIPE)
    loads = [subprocess.Popen(["docker", "-H", host, "load", "-q"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE) for host in hosts]
    for chunk in iter(lambda: save.stdout.read(1 << 20), b""):
        for load in loads:
            load.stdin.write(chunk)
    for load in loads:
        load.stdin.close()
        if load.wait() != 0:
            raise RuntimeError(f"docker load into {load.args[2]} failed: {load.stderr.read().decode()[-300:]}")
    if save.wait() != 0:
        raise RuntimeError(f"docker save {' '.join(images)} failed")


def start_engine_host(name: str, workdir: Path, authorized: Path, engine: SecondEngine) -> FakeHost:
    """A fake host whose user's `docker` talks to the second engine (sshd SetEnv)."""
    return start_fake_host(name, 40, workdir, authorized, extra=f"SetEnv DOCKER_HOST={engine.docker_host}\n")


# ---------------------------------------------------------------- a host with GPUs to share
#
# The 8-GPU host (issue 20 item 6): a fake host whose own dockerd runs boxes with `--gpus`,
# so GPU allocation, collisions and GPU-idle rules run for real where no GPU exists.
#
# - Docker enables `--gpus` when an executable named nvidia-container-runtime-hook is on
#   dockerd's PATH (checked with 20.10); our hook is a few lines that call gpu_hook()
#   below. Docker itself gives the box NVIDIA_VISIBLE_DEVICES (the indices or UUIDs asked,
#   "0,1" for a count of 2, "all") and adds the hook as an OCI prestart hook. The variable
#   is in the OCI spec only: `docker inspect` shows the request (HostConfig.DeviceRequests)
#   but not the variable, which the box's first process has (GpuBed.visible_devices reads
#   it there; ssh logins in the box do not inherit it). The engine is started with
#   `--add-runtime nvidia=<runc>`, so `docker info` lists the nvidia runtime devbox's
#   preflight wants; boxes still run on plain runc.
# - At prestart runc hands the hook the container's state (its bundle) on stdin. For a box
#   with GPUs the hook writes, through the host-side path of the box's root (config.json's
#   root.path, writable from the host even when the box's root is read-only), a fake
#   /usr/bin/nvidia-smi (where the real toolkit mounts its own) and its data into
#   /usr/share/devbox-fake-gpu: only the box's GPUs, numbered from 0 as a real box sees
#   them, with the host's UUIDs, bus ids and minor numbers. A device the host lacks fails
#   the start (in libnvidia-container's words), as does an image whose symlinks would lead
#   those writes out of its root (the hook runs as the host's root); a container without
#   NVIDIA_VISIBLE_DEVICES (no GPUs, `--gpus 0`) is left as it was.
# - One nvidia-smi serves host and box (tests/fixtures/fake-nvidia-smi.{sh,awk}: POSIX sh
#   and mawk, since boxes have no python): it answers the forms devbox sends (--query-gpu,
#   --query-compute-apps, -q -x, the banner, -L, -i/--id) in the shapes, error texts and
#   exit codes recorded on a real H200 (tests/fixtures/nvidia-smi-h200-answers.txt).
# - Utilisation and compute processes are files the tests write: on the host a state dir
#   with util/<index> and procs/<index> (`PID MIB NAME` lines) per GPU. GpuBed.set_util
#   also copies the value into every running box that holds that GPU (one physical GPU,
#   seen alike from both sides), and the hook copies the current values into a box when
#   it starts. Inside a box, /tmp/devbox-fake-gpu-util (`INDEX PERCENT` lines, the box's
#   own numbering), writable by the box user, overrides what the host set: a job in the
#   box "loading" its GPU. The host never sees that override (it lives in the box's tmpfs),
#   and a box lists no compute processes (their PIDs belong to the host's namespace).

HOOK_NAME = "nvidia-container-runtime-hook"
BOX_GPU_DATA = "/usr/share/devbox-fake-gpu"
BOX_UTIL_FILE = "/tmp/devbox-fake-gpu-util"
SMI_FILES = ("fake-nvidia-smi.sh", "fake-nvidia-smi.awk")
# An HGX H200 board's eight PCI buses, as a real 8-GPU server numbers them.
HGX_BUSES = ("18", "2A", "3A", "5D", "9A", "AB", "BA", "DB")


@dataclass(frozen=True)
class FakeGpu:
    """One GPU of the bed, as the recorded H200 with its own identity."""

    index: int          # the host's index (and the device's minor number)
    uuid: str
    bus_id: str
    serial: str
    name: str = "NVIDIA H200"
    memory_mib: int = 143771
    compute_cap: str = "9.0"

    def row(self, shown_as: int) -> str:
        """Its line in a data dir's `gpus` file; `shown_as` is the index nvidia-smi prints."""
        return "\t".join(map(str, (shown_as, self.index, self.uuid, self.name, self.bus_id, self.memory_mib,
                                   self.compute_cap, self.serial))) + "\n"

    @classmethod
    def from_row(cls, line: str) -> "FakeGpu":
        _, index, uuid, name, bus_id, memory, cap, serial = line.rstrip("\n").split("\t")
        return cls(int(index), uuid, bus_id, serial, name, int(memory), cap)


def h200_gpus(count: int = 8, host: str = "") -> list[FakeGpu]:
    """`count` H200s with stable, distinct UUIDs, bus ids and serials; a `host` name makes
    them differ from every other host's (one machine's GPUs are no other's)."""
    import hashlib

    gpus = []
    for i in range(count):
        h = hashlib.sha1(f"devbox-bed-h200-{host + '-' if host else ''}{i}".encode()).hexdigest()
        gpus.append(FakeGpu(i, f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}",
                            f"00000000:{HGX_BUSES[i % 8]}:00.0", str(1653724000133 + i)))
    return gpus


def gpu_xml_template() -> str:
    """The recorded H200's <gpu> block of `nvidia-smi -q -x`, its live values as @FIELDS@
    (each recorded value must be found exactly once: a new recording fails loudly here)."""
    text = (FIXTURES / "nvidia-smi-q-h200-busy.xml").read_text()
    block = text[text.index("\t<gpu id="):text.index("\t</gpu>\n") + len("\t</gpu>\n")]
    start, end = block.index("\t\t<processes>\n") + len("\t\t<processes>\n"), block.index("\t\t</processes>")
    block = block[:start] + "@PROCS@\n" + block[end:]
    for old, new in (('<gpu id="00000000:00:06.0">', '<gpu id="@BUS@">'), ("<product_name>NVIDIA H200<", "<product_name>@NAME@<"),
                     ("<serial>1653724000133<", "<serial>@SERIAL@<"), ("<uuid>GPU-ce695cce-5d93-c3a0-3eef-29f9b2a99ac6<", "<uuid>@UUID@<"),
                     ("<minor_number>0<", "<minor_number>@MINOR@<"), ("<module_id>5<", "<module_id>@MODULE@<"),
                     ("<pci_bus>00<", "<pci_bus>@PCIBUS@<"), ("<pci_device>06<", "<pci_device>@PCIDEV@<"),
                     ("<pci_bus_id>00000000:00:06.0<", "<pci_bus_id>@BUS@<"), ("<total>143771 MiB<", "<total>@TOTAL@ MiB<"),
                     ("<used>4467 MiB<", "<used>@USED@ MiB<"), ("<free>138690 MiB<", "<free>@FREE@ MiB<"),
                     ("<used>4468 MiB<", "<used>@USED@ MiB<"), ("<free>257676 MiB<", "<free>@BAR1FREE@ MiB<"),
                     ("<gpu_util>100 %<", "<gpu_util>@UTIL@ %<"), ("<memory_util>6 %<", "<memory_util>@MEMUTIL@ %<"),
                     ("<gpu_temp>58 C<", "<gpu_temp>@TEMP@ C<"), ("<average_power_draw>675.56 W<", "<average_power_draw>@POWER@ W<"),
                     ("<instant_power_draw>664.63 W<", "<instant_power_draw>@POWER@ W<")):
        if block.count(old) != 1:
            raise RuntimeError(f"nvidia-smi-q-h200-busy.xml: {old!r} found {block.count(old)} times, not once")
        block = block.replace(old, new)
    return block


def write_gpu_data(dest: Path, gpus: list[FakeGpu], renumber: bool) -> None:
    """A data dir the fake nvidia-smi answers from: the host's (its own indices) or a
    box's (`renumber`: 0, 1, ... in the order asked, as inside a real box)."""
    for sub in (dest, dest / "util", dest / "procs"):
        sub.mkdir(mode=0o755, parents=True, exist_ok=True)
    (dest / "gpus").write_text("".join(g.row(i if renumber else g.index) for i, g in enumerate(gpus)))
    (dest / "gpu.xml").write_text(gpu_xml_template())
    for name in SMI_FILES:
        shutil.copyfile(FIXTURES / name, dest / name)
    for path in dest.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def write_smi(path: Path, data: str, override: str = "", show_procs: bool = True) -> None:
    """The `nvidia-smi` command itself: hands its options to the fake with its data dir."""
    import shlex

    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n# The devbox test bed's fake nvidia-smi (devbox/testbed.py).\n"
                    f"exec sh {shlex.join([f'{data}/{SMI_FILES[0]}', data, override, str(int(show_procs))])} \"$@\"\n")
    path.chmod(0o755)


def _write_atomically(path: Path, text: str) -> None:
    """A reader (nvidia-smi in a box, any moment) sees the old file or the new, never half."""
    part = path.with_name(path.name + ".part")
    part.write_text(text)
    part.chmod(0o644)
    part.replace(path)


def gpu_hook(args: list[str], stdin, state: str) -> int:
    """The bed's nvidia-container-runtime-hook (`prestart`, OCI state on stdin): plant the
    fake nvidia-smi and the box's GPUs in its root. Exit 0 and touch nothing for a
    container that asked for no GPUs, whatever else is wrong."""
    if args[:1] != ["prestart"]:
        return 0
    try:
        bundle = Path(json.load(stdin)["bundle"])
        config = json.loads((bundle / "config.json").read_text())
        env = dict(e.split("=", 1) for e in config.get("process", {}).get("env", []) if "=" in e)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"{HOOK_NAME} (devbox test bed): unreadable container state ({exc}); no GPUs planted", file=sys.stderr)
        return 0
    wanted = env.get("NVIDIA_VISIBLE_DEVICES", "").strip()
    if wanted in ("", "void", "none"):
        return 0
    host = Path(state)
    gpus = [FakeGpu.from_row(line) for line in (host / "gpus").read_text().splitlines() if line]
    chosen = gpus if wanted == "all" else []
    for device in ([] if wanted == "all" else wanted.split(",")):
        found = [g for g in gpus if device.strip() in (str(g.index), g.uuid)]
        if not found:  # libnvidia-container's own words
            print(f"nvidia-container-cli: device error: {device}: unknown device", file=sys.stderr)
            return 1
        chosen += [g for g in found if g not in chosen]
    root = Path(config["root"]["path"])
    root = root if root.is_absolute() else bundle / root
    try:
        data, smi = (_fresh_path_in(root, path) for path in (BOX_GPU_DATA, "/usr/bin/nvidia-smi"))
    except ValueError as exc:
        print(f"{HOOK_NAME} (devbox test bed): {exc}", file=sys.stderr)
        return 1
    write_gpu_data(data, chosen, renumber=True)
    for gpu in chosen:
        for kind in ("util", "procs"):
            source = host / kind / str(gpu.index)
            if source.exists():
                _write_atomically(data / kind / str(gpu.index), source.read_text())
    write_smi(smi, BOX_GPU_DATA, BOX_UTIL_FILE, show_procs=False)
    return 0


def _fresh_path_in(root: Path, inside: str) -> Path:
    """`inside` under the box's root, emptied, where writing cannot leave the root: the
    hook runs as the host's root, and an image's symlink (/usr/bin -> /etc, say) would
    otherwise aim its writes at the host (the toolkit's own CVE-2024-0132 was of this kind)."""
    path = root / inside.lstrip("/")
    real_root = os.path.realpath(root)
    if not os.path.realpath(path.parent).startswith(real_root + os.sep):
        raise ValueError(f"{inside}: its directory leads out of the container's root; nothing planted")
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    return path


def write_hook(bindir: Path, state: Path) -> Path:
    """The hook executable dockerd finds on its PATH: this Python, calling gpu_hook."""
    bindir.mkdir(mode=0o755, parents=True, exist_ok=True)
    hook = bindir / HOOK_NAME
    repo = Path(__file__).resolve().parent.parent
    hook.write_text(f"#!{sys.executable}\n# The devbox test bed's {HOOK_NAME} (devbox/testbed.py, gpu_hook).\n"
                    f"import sys\nsys.path.insert(0, {str(repo)!r})\nfrom devbox.testbed import gpu_hook\n"
                    f"sys.exit(gpu_hook(sys.argv[1:], sys.stdin, {str(state)!r}))\n")
    hook.chmod(0o755)
    return hook


@dataclass
class GpuBed:
    """A host's GPUs and the engine whose boxes get them: what its nvidia-smi reports and
    what tests set (utilisation, compute processes), host side and in a box."""

    root: Path
    gpus: list[FakeGpu]
    engine: SecondEngine | None = None
    host: FakeHost | None = None

    @property
    def name(self) -> str:
        """The host's name in the laptop's ssh config."""
        return self.host.name if self.host else ""

    @property
    def state(self) -> Path:
        return self.root / "gpu-state"

    @property
    def smi_bin(self) -> Path:
        return self.root / "smi-bin"

    def smi(self, *args: str) -> subprocess.CompletedProcess:
        """The host's nvidia-smi, run here."""
        return subprocess.run([str(self.smi_bin / "nvidia-smi"), *args], capture_output=True, text=True, timeout=30)

    def set_util(self, index: int, pct: int) -> None:
        """GPU `index` (the host's numbering) at `pct` %, on the host and in its boxes."""
        self._set("util", index, f"{int(pct)}\n")

    def set_processes(self, index: int, processes: list[tuple[int, int, str]]) -> None:
        """Compute processes on GPU `index`: (pid, MiB, name); [] clears them."""
        self._set("procs", index, "".join(f"{pid} {mib} {name}\n" for pid, mib, name in processes))

    def reset(self) -> None:
        """No box on the engine (containers, volumes, networks), every GPU idle, no processes."""
        if self.engine:
            self.engine.remove_containers()
            self.engine.docker("network", "prune", "-f", timeout=60)
        for gpu in self.gpus:
            self.set_util(gpu.index, 0)
            self.set_processes(gpu.index, [])

    def stop(self) -> None:
        """The host's sshd, then the engine with everything on it (its root goes too)."""
        if self.host:
            self.host.stop()
        if self.engine:
            self.engine.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def _set(self, kind: str, index: int, text: str) -> None:
        if not any(g.index == index for g in self.gpus):
            raise ValueError(f"the bed has no GPU {index}")
        _write_atomically(self.state / kind / str(index), text)
        for data in self._box_data_dirs():
            if any(FakeGpu.from_row(line).index == index for line in (data / "gpus").read_text().splitlines() if line):
                _write_atomically(data / kind / str(index), text)

    def _box_data_dirs(self) -> list[Path]:
        """The planted data dirs of the engine's running boxes, seen from the host."""
        ids = self.engine.docker("ps", "-q", timeout=60).stdout.split() if self.engine else []
        if not ids:
            return []
        merged = self.engine.docker("inspect", "-f", "{{.GraphDriver.Data.MergedDir}}", *ids, timeout=60).stdout.split()
        dirs = [(Path(m), Path(m) / BOX_GPU_DATA.lstrip("/")) for m in merged]
        return [d for m, d in dirs if (d / "gpus").exists() and os.path.realpath(d).startswith(os.path.realpath(m) + os.sep)]

    def set_box_util(self, container: str, index: int, pct: int) -> None:
        """Inside `container`, as its user: GPU `index` (the box's numbering) at `pct` %."""
        script = ('f=$1; { grep -v "^$2 " "$f" 2>/dev/null; echo "$2 $3"; } >"$f.part" && mv "$f.part" "$f"')
        done = self.engine.docker("exec", container, "sh", "-c", script, "sh", BOX_UTIL_FILE, str(index), str(int(pct)), timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"set_box_util in {container}: {done.stderr.strip()}")

    def box_smi(self, container: str, *args: str) -> subprocess.CompletedProcess:
        """nvidia-smi inside `container`, as its user."""
        return self.engine.docker("exec", container, "nvidia-smi", *args, timeout=60)

    def visible_devices(self, container: str) -> str | None:
        """NVIDIA_VISIBLE_DEVICES of running `container` (None: it has none), as its first
        process got it. Docker puts it in the OCI spec's env, not in the container's config,
        so `docker inspect` shows it nowhere: it gives the pid, /proc the environment."""
        done = self.engine.docker("inspect", "-f", "{{.State.Pid}}", container, timeout=60)
        if done.returncode != 0 or done.stdout.strip() in ("", "0"):
            raise RuntimeError(f"{container} is not running: {done.stderr.strip()}")
        environ = Path(f"/proc/{done.stdout.strip()}/environ").read_bytes().split(b"\0")
        env = dict(e.decode().split("=", 1) for e in environ if b"=" in e)
        return env.get("NVIDIA_VISIBLE_DEVICES")


def free_address_pool() -> str:
    """A 10.X.0.0/16 no route or address of this machine touches (random, so that
    concurrent runs rarely meet), for an engine's box networks."""
    import random

    taken = _ip("-4", "route").stdout + _ip("-4", "addr").stdout
    free = [x for x in range(100, 148) if f"10.{x}." not in taken]
    if not free:
        raise RuntimeError("no free 10.x.0.0/16 for the GPU host's networks")
    return f"10.{random.choice(free)}.0.0/16"


def plant_gpus(bed: GpuBed) -> tuple[str, tuple[str, ...]]:
    """The host side of a GPU host: its GPUs' state and nvidia-smi, and the hook. Returns
    what its dockerd needs for `--gpus` (the hook's dir for the front of PATH, arguments)."""
    bed.root.chmod(0o755)
    write_gpu_data(bed.state, bed.gpus, renumber=False)
    write_smi(bed.smi_bin / "nvidia-smi", str(bed.state))
    hook_dir = write_hook(bed.root / "hook-bin", bed.state).parent
    runc = shutil.which("runc") or "/usr/sbin/runc"
    return str(hook_dir), ("--add-runtime", f"nvidia={runc}")


def start_gpu_bed(root: Path, seed_images: list[str], gpus: list[FakeGpu] | None = None) -> GpuBed:
    """The GPUs' state and nvidia-smi, then an engine whose boxes get them (`--gpus`)."""
    bed = GpuBed(root, gpus or h200_gpus(8))
    hook_dir, runtime_args = plant_gpus(bed)
    bed.engine = start_second_engine(root, [], free_address_pool(), kind=1, extra_args=runtime_args, path_prefix=hook_dir)
    try:
        seed(bed.engine.docker_host, seed_images)
        bed.reset()
    except BaseException:
        bed.stop()
        raise
    return bed


def start_gpu_host(name: str, workdir: Path, authorized: Path, bed: GpuBed) -> FakeHost:
    """A fake host whose user's `nvidia-smi` is the bed's and whose `docker` is its engine."""
    bed.host = start_fake_host(name, 41, workdir, authorized,
                               extra=f"SetEnv PATH={bed.smi_bin}:/usr/local/bin:/usr/bin:/bin DOCKER_HOST={bed.engine.docker_host}\n")
    return bed.host


# ---------------------------------------------------------------- hosts that are really separate
#
# Each host is a network namespace of its own with its own sshd (and, for the inner host,
# its own dockerd), joined by veth pairs with addresses this bed makes:
#
#   laptop (root ns) 10.X.Y.1 --veth-- 10.X.Y.2 bastion --veth-- 10.X.Y.6 inner (sshd, dockerd)
#
# The laptop has an `unreachable` route for the inner pair, so nothing it sends there
# leaves the machine and a direct connection fails at once. A box the inner engine
# publishes on 127.0.0.1 exists only inside the inner namespace: reachable only through
# the inner host's sshd, as on a real remote host. Daemons are started with
# `nsenter --net` (DESIGN.md: `ip netns exec` remounts /sys and breaks dockerd).

NETNS_DIR = Path("/var/run/netns")
BEDS_DIR = Path("/run/devbox-testbeds")  # one record per live bed (see sweep_dead_beds)

RELAY = """\
import os, select, socket, sys
# stdin/stdout <-> TCP host:port: what `nc host port` does for a ProxyCommand.
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
sock.settimeout(None)
open_fds = [0, sock]
while sock in open_fds:
    for ready in select.select(open_fds, [], [])[0]:
        if ready == 0:
            data = os.read(0, 65536)
            if data:
                sock.sendall(data)
            else:
                sock.shutdown(socket.SHUT_WR)
                open_fds.remove(0)
        else:
            data = sock.recv(65536)
            if not data:
                sys.exit(0)
            view = memoryview(data)
            while view:
                view = view[os.write(1, view):]
"""


def in_netns(netns: str, argv: list[str]) -> list[str]:
    return ["nsenter", f"--net={NETNS_DIR / netns}", *argv]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _free_subnet() -> str:
    """A 10.X.Y.0/29 no route of this machine touches (random, so concurrent beds differ)."""
    import random

    taken = _ip("-4", "route").stdout + _ip("-4", "addr").stdout
    for _ in range(100):
        prefix = f"10.{random.randint(200, 249)}.{random.randint(0, 255)}"
        if f"{prefix}." not in taken:
            return prefix
    raise RuntimeError("no free 10.x address range for the separate-host bed")


@dataclass
class NetnsEngine(SecondEngine):
    """A dockerd inside a host's namespace, with its own data root, exec root, socket and
    pidfile; its docker0 bridge lives and dies with the namespace."""

    netns: str = ""
    extra_args: tuple[str, ...] = ()   # e.g. the nvidia runtime (plant_gpus)
    path_prefix: str = ""              # in front of dockerd's PATH (where the NVIDIA hook is)

    def start(self, seed_images: list[str]) -> None:
        env = {**os.environ, "PATH": f"{self.path_prefix}:{os.environ['PATH']}"} if self.path_prefix else None
        with open(self.root / "dockerd.log", "w") as log:
            self.process = subprocess.Popen(
                in_netns(self.netns, ["dockerd", "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
                                      "--pidfile", str(self.root / "docker.pid"), "-H", self.docker_host, "--group", "docker",
                                      "--iptables=false", "--ip6tables=false", *self.extra_args]),
                stdout=log, stderr=subprocess.STDOUT, env=env)
        for _ in range(240):
            if self.docker("info").returncode == 0 or self.process.poll() is not None:
                break
            time.sleep(0.25)
        if self.docker("info").returncode != 0:
            raise RuntimeError(f"dockerd in {self.netns} did not start: {(self.root / 'dockerd.log').read_text()[-500:]}")
        seed(self.docker_host, seed_images)

    def stop(self) -> None:
        if self.process is None and (self.root / "docker.pid").exists():  # a dead run's engine
            self.remove_containers()
            pid = int((self.root / "docker.pid").read_text().strip())
            subprocess.run(["kill", str(pid)], capture_output=True)
            for _ in range(300):  # killed mid-shutdown, it would leave its data root mounted
                if not _alive(pid):
                    break
                time.sleep(0.1)
        if self.process and self.process.poll() is None:
            self.remove_containers()
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@dataclass
class SeparateBed:
    """The bastion and inner hosts, each in its own namespace; everything made is recorded
    as it is made, so stop() undoes exactly that, also after a half-finished start."""

    workdir: Path
    tag: str
    prefix: str = ""
    netns: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    routes: list[str] = field(default_factory=list)
    hosts: dict[str, FakeHost] = field(default_factory=dict)
    engines: dict[str, NetnsEngine] = field(default_factory=dict)  # by role

    @property
    def engine(self) -> NetnsEngine | None:
        """The inner host's engine."""
        return self.engines.get("inner")

    @property
    def relay(self) -> Path:
        return self.workdir / "relay.py"

    def proxy_command(self) -> str:
        """A ProxyCommand that reaches the inner host from inside its namespace, like an
        IAP/SSM tunnel: the laptop itself has no route there."""
        return f"ProxyCommand nsenter --net={NETNS_DIR / self.netns_name('inner')} {sys.executable} {self.relay} %h %p"

    def netns_name(self, role: str) -> str:
        return f"dbx-{self.tag}-{role}"

    def link_name(self, which: str) -> str:
        return f"dbx{self.tag}{which}0"  # its peer ends in 1; deleting one end deletes both

    def add_netns(self, role: str) -> str:
        name = self.netns_name(role)
        _ip("netns", "add", name)
        self.netns.append(name)
        _ip("-n", name, "link", "set", "lo", "up")
        return name

    def add_link(self, left: str | None, left_addr: str, right: str, right_addr: str, suffix: str) -> None:
        """A veth pair; `left` None is the laptop (root namespace)."""
        a = self.link_name(suffix)
        b = a[:-1] + "1"
        _ip("link", "add", a, "type", "veth", "peer", "name", b)
        self.links.append(a)
        for dev, ns, addr in ((a, left, left_addr), (b, right, right_addr)):
            scope = ["-n", ns] if ns else []
            if ns:
                _ip("link", "set", dev, "netns", ns)
            _ip(*scope, "addr", "add", f"{addr}/30", "dev", dev)
            _ip(*scope, "link", "set", dev, "up")

    def start_sshd(self, role: str, netns: str, address: str, authorized: Path, extra: str = "") -> FakeHost:
        hostdir = self.workdir / role
        hostdir.mkdir(mode=0o755)
        host_key = write_sshd_config(f"{role}-{self.tag}", hostdir, address, 22, authorized, extra)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        log_path = hostdir / "sshd.log"
        with open(log_path, "a") as log:
            process = subprocess.Popen(in_netns(netns, [SSHD, "-D", "-e", "-f", str(hostdir / "sshd_config")]),
                                       stdout=log, stderr=subprocess.STDOUT)
        host = self.hosts[role] = FakeHost(role, address, 22, OPS_USER, host_key, process)
        for _ in range(200):  # the laptop may have no route to it: wait for sshd to say it listens
            if "Server listening on" in log_path.read_text():
                return host
            if process.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"sshd in {netns} did not start: {log_path.read_text()[-500:]}")

    def stop(self) -> None:
        """Undo everything, each step on its own so one failure leaves no other leftover."""
        steps = [engine.stop for engine in self.engines.values()]
        steps += [host.stop for host in self.hosts.values()]
        steps += [lambda n=n: self._kill_rest(n) for n in self.netns]
        steps += [lambda n=n: _ip("netns", "del", n, check=False) for n in self.netns]
        steps += [lambda l=l: _ip("link", "del", l, check=False) for l in self.links]
        steps += [lambda r=r: _ip("route", "del", "unreachable", r, check=False) for r in self.routes]
        steps.append(self._unmount_rest)
        for step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - cleanup goes on; say what stayed
                print(f"separate bed cleanup: {exc}", file=sys.stderr)
        shutil.rmtree(self.workdir, ignore_errors=True)
        (BEDS_DIR / f"{self.tag}.json").unlink(missing_ok=True)

    def record(self, roles=("bastion", "inner"), links=("l", "i"), routes=(".4/30",), engines=None) -> None:
        """Note what this bed will make (namespaces, veths, routes as suffixes of the prefix,
        engines as {role: root under the workdir}), before making it, so a later run can undo
        it if this one dies uncleaned."""
        BEDS_DIR.mkdir(mode=0o700, exist_ok=True)
        info = {"pid": os.getpid(), "workdir": str(self.workdir), "prefix": self.prefix, "roles": roles, "links": links,
                "routes": routes, "engines": engines or {"inner": "engine"}}
        (BEDS_DIR / f"{self.tag}.json").write_text(json.dumps(info))

    def _unmount_rest(self) -> None:
        """Mounts left under the workdir: a dockerd that died uncleanly keeps its data root
        bind-mounted on itself (and rmtree would then silently leave the tree)."""
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        for mount in sorted((m for m in mounts if m.startswith(f"{self.workdir}/")), reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True)

    @staticmethod
    def _kill_rest(netns: str) -> None:
        """Processes still in a namespace this bed made are this bed's (docker-proxy, a shim)."""
        for pid in _ip("netns", "pids", netns, check=False).stdout.split():
            subprocess.run(["kill", "-9", pid], capture_output=True)


def start_separate_bed(workdir: Path, authorized: Path, tag: str, seed_images: list[str]) -> SeparateBed:
    """laptop -> bastion -> inner, the inner host with its own dockerd seeded with `seed_images`."""
    workdir.mkdir(mode=0o755, parents=True)
    os.chmod(workdir, 0o755)
    sweep_dead_beds()
    bed = SeparateBed(workdir, tag)
    try:
        ensure_user(OPS_USER, docker_group=True)
        bed.relay.write_text(RELAY)
        prefix = bed.prefix = _free_subnet()
        bed.record()
        bastion, inner = bed.add_netns("bastion"), bed.add_netns("inner")
        bed.add_link(None, f"{prefix}.1", bastion, f"{prefix}.2", "l")
        bed.add_link(bastion, f"{prefix}.5", inner, f"{prefix}.6", "i")
        _ip("route", "add", "unreachable", f"{prefix}.4/30")
        bed.routes.append(f"{prefix}.4/30")
        engine = bed.engines["inner"] = NetnsEngine(workdir / "engine", workdir / "engine" / "docker.sock", "", netns=inner)
        engine.root.mkdir(mode=0o755)
        engine.start(seed_images)
        bed.start_sshd("bastion", bastion, f"{prefix}.2", authorized)
        bed.start_sshd("inner", inner, f"{prefix}.6", authorized, f"SetEnv DOCKER_HOST={bed.engine.docker_host}\n")
    except BaseException:
        bed.stop()
        raise
    return bed


def start_dead_host(workdir: Path, tag: str) -> tuple[SeparateBed, str]:
    """An address that drops every packet (a host that is down, or a firewall that says
    nothing): a namespace of its own behind a veth, whose iptables DROPs all input.
    Returns the bed (stop() undoes it) and the address; connecting waits for the timeout."""
    workdir.mkdir(mode=0o755, parents=True)
    sweep_dead_beds()
    bed = SeparateBed(workdir, tag)
    try:
        prefix = bed.prefix = _free_subnet()
        bed.record(roles=("dead",), links=("d",), routes=())
        dead = bed.add_netns("dead")
        bed.add_link(None, f"{prefix}.1", dead, f"{prefix}.2", "d")
        subprocess.run(in_netns(dead, ["iptables", "-A", "INPUT", "-j", "DROP"]), check=True, capture_output=True)
    except BaseException:
        bed.stop()
        raise
    return bed, f"{prefix}.2"


def sweep_dead_beds() -> list[str]:
    """Undo the beds of runs that died before their cleanup (SIGKILL, a lost session): each
    left a record naming what it made. Beds of runs still alive are never touched."""
    swept = []
    for path in sorted(BEDS_DIR.glob("*.json")):
        info = json.loads(path.read_text())
        if _alive(info["pid"]):
            continue
        bed = SeparateBed(Path(info["workdir"]), path.stem, info["prefix"])
        bed.netns = [bed.netns_name(role) for role in info.get("roles", ("bastion", "inner"))]
        bed.links = [bed.link_name(which) for which in info.get("links", ("l", "i"))]
        bed.routes = [f"{bed.prefix}{route}" for route in info.get("routes", (".4/30",))] if bed.prefix else []
        for role, under in info.get("engines", {"inner": "engine"}).items():
            root = bed.workdir / under
            if root.exists():
                bed.engines[role] = NetnsEngine(root, root / "docker.sock", "", netns=bed.netns_name(role))
        bed.stop()
        swept.append(path.stem)
    return swept


def _alive(pid: int) -> bool:
    """A process that runs (a zombie, killed but not yet reaped, is dead)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def start_agent(sock: Path) -> subprocess.Popen:
    """An ssh-agent of a test's own on `sock` (the caller kills it by pid)."""
    process = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    for _ in range(200):
        if sock.exists():
            return process
        time.sleep(0.02)
    process.kill()
    raise RuntimeError(f"ssh-agent never made {sock}")


# ---------------------------------------------------------------- a team registry (issue 26)
#
# Debian's `docker-registry` (distribution 2.8) serving plain http on 127.0.0.1: Docker 20.10+
# pushes to and pulls from a 127.0.0.0/8 registry without TLS (loopback is insecure-allowed by
# default). The second engines (start_second_engine) share this machine's network namespace,
# so they reach it as a host reaches the lab's registry; the netns hosts (SeparateBed) cannot.


@dataclass
class Registry:
    root: Path
    address: str                    # 127.0.0.1:PORT
    process: subprocess.Popen | None = None

    @property
    def storage(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "registry.log"

    def stored_bytes(self) -> int:
        """Bytes of the blobs it holds (every layer once, whoever pushed it)."""
        return sum(p.stat().st_size for p in self.storage.rglob("data") if p.is_file())

    def requests(self, method: str, what: str) -> list[str]:
        """Access-log lines of `method` requests whose path has `what` (e.g. "/manifests/")."""
        return [line for line in self.log.read_text().splitlines() if f'"{method} /v2/' in line and what in line]

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


def start_registry(root: Path, users: dict[str, str] | None = None, port: int | None = None) -> Registry:
    """A registry storing in root/data; `users` (name: password) turns on htpasswd auth."""
    import bcrypt

    root.mkdir(parents=True, exist_ok=True)
    registry = Registry(root, f"127.0.0.1:{port or free_port('127.0.0.1')}")
    auth = ""
    if users:
        lines = [f"{name}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=5)).decode()}" for name, pw in users.items()]
        (root / "htpasswd").write_text("\n".join(lines) + "\n")
        auth = f"auth:\n  htpasswd:\n    realm: devbox-test\n    path: {root / 'htpasswd'}\n"
    (root / "config.yml").write_text(
        f"version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {registry.storage}\n{auth}http:\n  addr: {registry.address}\n")
    registry.process = subprocess.Popen(["docker-registry", "serve", str(root / "config.yml")],
                                        stdout=open(registry.log, "w"), stderr=subprocess.STDOUT)
    host, port_text = registry.address.split(":")
    _wait_listening(host, int(port_text), registry.process, registry.log)
    return registry
