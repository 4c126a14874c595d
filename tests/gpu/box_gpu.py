"""The box itself on a real GPU (issue 24): devbox's own image, started under runc with the
`docker create` arguments devbox.plan.run_args gives this machine (translated by oci_box.py),
then reached exactly as `devbox verify` reaches a box: a laptop HOME whose ssh config names the
host, devbox's own `connect` (pin the box's host key, write the `devbox-HOST` entry), and
devbox.commands.verify.verify_box (paramiko through the host's direct-tcpip tunnel, the OpenSSH
client through ProxyJump, VS Code's -D forward and sftp).

The host is the test bed's own fake host (devbox.testbed: sshd run as root, key-only, a user
devbox-ops) on this machine; the box gets its own network namespace, published on the host's
127.0.0.1:PORT as docker-proxy would. Run as root by run_box_gpu.sh (which unpacks runc, tini
and OpenSSH); without a GPU, `--gpus none` runs the same path (the GPU checks then say skipped).

    python3 tests/gpu/box_gpu.py --carry DIR --work DIR --out DIR [--gpus all|none|1,2]

More checks go in EXTRA_CHECKS: each is called with (host, spec, port, box name, runc) after
verify and returns devbox.verify.Check objects for the same report. When devbox.toml sets
`idle_stop` (box-device-idle.toml), box_idle.py's checks follow: the watcher on the real GPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import glob
import json
import os
import platform
import pwd
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
import box_idle  # noqa: E402
import oci_box  # noqa: E402

CONFIG = Path(__file__).resolve().parent / "box-device.toml"
HOST = "device"
EXTRA_CHECKS: list = []   # (host, spec, port, name, runc) -> list[Check]
# The driver's libraries the NVIDIA container toolkit mounts for the `utility,compute` capabilities.
DRIVER_LIBS = ("libnvidia-ml.so", "libnvidia-cfg.so", "libcuda.so", "libcudadebugger.so", "libnvidia-ptxjitcompiler.so",
               "libnvidia-nvvm.so", "libnvidia-gpucomp.so", "libnvidia-allocator.so", "libnvidia-opencl.so")
DRIVER_BINS = ("nvidia-smi", "nvidia-debugdump", "nvidia-persistenced", "nvidia-cuda-mps-control", "nvidia-cuda-mps-server")
LIB_SEARCH = ("/usr/local/nvidia/lib64", "/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu")
BIN_SEARCH = ("/usr/local/nvidia/bin", "/usr/bin")


def sh(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, **kw)


# ---------------------------------------------------------------- this machine, as the toolkit sees it


def read_machine(work: Path, init: str) -> oci_box.Machine:
    """The GPUs (index, UUID, device minor), the control nodes and the driver's files."""
    gpus = []
    out = sh("nvidia-smi", "--query-gpu=index,uuid,pci.bus_id", "--format=csv,noheader").stdout if shutil.which("nvidia-smi") else ""
    for line in out.strip().splitlines():
        index, uuid, bus = (x.strip() for x in line.split(","))
        gpus.append((index, uuid, *driver_entry(bus, int(index))))
    control = {p: (os.major(os.stat(p).st_rdev), os.minor(os.stat(p).st_rdev))
               for p in ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset") if os.path.exists(p)}
    major = os.major(os.stat(glob.glob("/dev/nvidia[0-9]*")[0]).st_rdev) if gpus else 195
    files: dict[str, str] = {}
    for folder in LIB_SEARCH:
        for name in DRIVER_LIBS:
            for path in sorted(glob.glob(f"{folder}/{name}.*")):
                files.setdefault(f"{oci_box.LIB_DIR}/{os.path.basename(path)}", os.path.realpath(path))
    for name in DRIVER_BINS:
        found = next((f"{d}/{name}" for d in BIN_SEARCH if os.path.exists(f"{d}/{name}")), None)
        if found:
            files[f"/usr/bin/{name}"] = os.path.realpath(found)
    driver = tuple((source, target) for target, source in sorted(files.items())) if gpus else ()
    return oci_box.Machine(tuple(gpus), control, major, driver, str(work / "volumes"), str(work / "state"), init)


def driver_entry(bus: str, index: int) -> tuple[int, str]:
    """/dev/nvidiaN's N for the GPU at PCI `bus` (the driver's "Device Minor", else its index)
    and its /proc/driver/nvidia/gpus folder ("" when the driver has none)."""
    for info in glob.glob(f"/proc/driver/nvidia/gpus/*{bus.lower()[-7:]}/information"):
        for line in Path(info).read_text().splitlines():
            if line.startswith("Device Minor:"):
                return int(line.split(":")[1]), os.path.dirname(info)
    return index, ""


def machine_facts():
    """What devbox's gather would learn of this host's engine (there is no engine here)."""
    from devbox.facts import Facts

    memlock = Path("/proc/self/limits").read_text().split("Max locked memory")[1].split()[1]
    return Facts(host_memory=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), host_cpus=os.cpu_count(),
                 memlock_max=-1 if memlock == "unlimited" else int(memlock), runtimes=("nvidia",), host_checked=True)


# ---------------------------------------------------------------- the box under runc


def make_volumes(box: oci_box.Box, rootfs: Path, volumes: Path) -> None:
    """Docker's named volumes: a new one gets a copy of what the image has at its target."""
    for name, target in box.named_volumes:
        folder = volumes / name
        if folder.exists():
            continue
        image_path = rootfs / target.lstrip("/")
        if image_path.is_dir():
            subprocess.run(["cp", "-a", str(image_path), str(folder)], check=True)
        else:
            folder.mkdir(parents=True)


def write_keys(spec, volumes: Path, authorized_keys: str) -> None:
    """What devbox's keys writer leaves in the keys volume: the file, 0600, the box's uid."""
    path = volumes / spec.keys_volume / "authorized_keys"
    path.write_text(authorized_keys)
    os.chown(path, spec.uid, spec.gid)
    os.chmod(path, 0o600)


NVLS_OFF = ("NCCL_NVLS_ENABLE=0", "TORCH_SYMM_MEM_DISABLE_MULTICAST=1", "NVSHMEM_DISABLE_NVLS=1")


def keep_multicast_off(spec, volumes: Path) -> None:
    """The login's ~/.bashrc (home volume) exports NVLS_OFF before its interactive guard: bash
    reads it for `ssh box CMD` too (Debian/Ubuntu build it so), and sshd passes no env of ours."""
    rc = volumes / spec.volume_name(spec.all_volumes()[0]) / ".bashrc"
    old = rc.read_text() if rc.exists() else ""
    rc.write_text("# NVLink multicast stays off on this shared GPU host (the device's KINDS.md)\n"
                  f"export {' '.join(NVLS_OFF)}\n" + old)
    os.chown(rc, spec.uid, spec.gid)


def session_env_ok(laptop, alias: str) -> tuple[bool, str]:
    """What a command over `ssh devbox-HOST` sees: NVLS_OFF must be there before NCCL runs."""
    done = laptop.ssh(alias, "env")
    got = [line for line in done.stdout.splitlines() if line.split("=")[0] in {v.split("=")[0] for v in NVLS_OFF}]
    return all(v in got for v in NVLS_OFF), " ".join(sorted(got)) or (done.stderr.strip()[-200:])


GATEWAY = "172.18.0.1"   # where docker-proxy's connections come from: the box network's gateway
SIOCSIFADDR = 0x8916


def in_netns(netns: str) -> bool:
    """Move the calling thread (only it: setns(2) on a thread moves that thread) into `netns`."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    with open(netns) as ns:
        return libc.setns(ns.fileno(), 0x40000000) == 0   # CLONE_NEWNET


class Publish:
    """docker-proxy for a box in its own network namespace: host address:port -> the box's port.

    Under Docker the box sees its SSH sessions come from the gateway, never from loopback (the
    idle watcher counts only those: the health check connects over 127.0.0.1). The namespace has
    only lo here, so the gateway's address is put on lo and the proxy connects from it."""

    def __init__(self, pid: int, address: str, port: int, box_port: int):
        self.netns, self.box_port = f"/proc/{pid}/ns/net", box_port
        added = threading.Thread(target=self.add_gateway)
        added.start()
        added.join()
        self.listener = socket.create_server((address, port))
        threading.Thread(target=self.serve, daemon=True).start()

    def add_gateway(self) -> None:
        import fcntl
        import struct

        if not in_netns(self.netns):
            raise OSError(f"setns {self.netns} failed")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:   # `ip addr add GATEWAY/16 dev lo` without ip
            fcntl.ioctl(s, SIOCSIFADDR, struct.pack("16sH2s4s8s", b"lo:gw", socket.AF_INET, b"", socket.inet_aton(GATEWAY), b""))

    def serve(self) -> None:
        while True:
            client, _ = self.listener.accept()
            threading.Thread(target=self.forward, args=(client,), daemon=True).start()

    def forward(self, client: socket.socket) -> None:
        if not in_netns(self.netns):
            client.close()
            return
        try:
            box = socket.create_connection((GATEWAY, self.box_port), timeout=10, source_address=(GATEWAY, 0))
        except OSError:
            client.close()
            return
        box.settimeout(None)
        threading.Thread(target=pump, args=(box, client), daemon=True).start()
        pump(client, box)


def pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


# ---------------------------------------------------------------- the run


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--carry", type=Path, required=True, help="box.tar.xz (or box.tar), box-image.json, box-seccomp.json")
    ap.add_argument("--work", type=Path, required=True, help="a folder not below /tmp (sshd's StrictModes)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--runc", default="runc")
    ap.add_argument("--init", required=True, help="docker-init (tini) for --init")
    ap.add_argument("--gpus", default="", help="override devbox.toml's gpus: all, none, or indices 1,2")
    ap.add_argument("--config", type=Path, default=CONFIG, help="the devbox.toml (default: box-device.toml beside this)")
    ap.add_argument("--host", default=HOST, help="its [hosts.NAME] table, also the fake host's name")
    ap.add_argument("--tag", default="", help="a suffix for the report's file names")
    return ap.parse_args()


def unpack(carry: Path, rootfs: Path) -> dict:
    """The exported image into rootfs; returns the image's config (Env, Entrypoint, User, Tag)."""
    rootfs.mkdir(parents=True)
    exported = next(p for p in (carry / "box.tar.xz", carry / "box.tar") if p.exists())
    if subprocess.run(["tar", "-C", str(rootfs), "-xf", str(exported)]).returncode != 0:
        import tarfile   # no xz here: Python's lzma reads it (owners kept: we are root)
        with tarfile.open(exported) as tar:
            tar.extractall(rootfs, numeric_owner=True, filter="fully_trusted")
    return json.loads((carry / "box-image.json").read_text())


def box_spec(a: argparse.Namespace):
    from devbox.config import check_flags, load_spec

    spec = load_spec(a.host, a.config)
    if not a.gpus:
        return spec
    wanted = a.gpus if a.gpus in ("all", "none") else [int(x) if x.isdigit() else x for x in a.gpus.split(",")]
    return dataclasses.replace(spec, **check_flags(gpus=wanted))   # as `gpus = [...]` in devbox.toml


def start_box(a: argparse.Namespace, work: Path, box: oci_box.Box, spec, authorized_keys: str) -> Path:
    """Volumes, keys, config.json, `runc run`, the published port; returns the host key's file."""
    rootfs = work / "bundle" / "rootfs"
    for name, content in box.files.items():
        (work / "state" / name).write_text(content)
    make_volumes(box, rootfs, work / "volumes")
    write_keys(spec, work / "volumes", authorized_keys)
    keep_multicast_off(spec, work / "volumes")
    (work / "bundle" / "config.json").write_text(json.dumps(box.config, indent=1))
    shutil.copy(work / "bundle" / "config.json", a.out / f"box-config{a.tag}.json")
    become_subreaper()
    with open(a.out / f"box-sshd{a.tag}.log", "w") as log:
        started = subprocess.run([a.runc, "run", "-d", "--pid-file", str(work / "box.pid"), box.name], cwd=work / "bundle",
                                 stdout=log, stderr=log)
    if started.returncode != 0:
        raise RuntimeError(f"runc run: exit {started.returncode}: {(a.out / f'box-sshd{a.tag}.log').read_text()[-1500:]}")
    pid = int((work / "box.pid").read_text())
    for address, host_port, box_port in box.publish:
        Publish(pid, address, host_port, box_port)
    host_key = work / "volumes" / spec.volume_name(spec.all_volumes()[0]) / ".devbox/hostkeys/ssh_host_ed25519_key.pub"
    for _ in range(100):
        if host_key.exists() and host_key.stat().st_size:
            break
        time.sleep(0.1)
    return host_key


def become_subreaper() -> None:
    """`runc run -d` leaves the box's init to the nearest subreaper: be it, as containerd's shim is
    under Docker, so the init's exit code (the box's, `docker inspect`'s ExitCode) can be read."""
    import ctypes

    if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:   # PR_SET_CHILD_SUBREAPER
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


INSIDE = ("id; ulimit -l; df -k /dev/shm | tail -1; grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; "
          "ls -l /opt/devbox/venv/bin/python3 /opt/devbox/venv/bin/python 2>&1; command -v python3; nvidia-smi -L 2>&1; "
          "cat /proc/1/cmdline | tr '\\0' ' '; echo; ps -eo user,pid,args 2>/dev/null || true")


def verify_through_host(a: argparse.Namespace, spec, port: int, keys, laptop, argv: list[str], box: oci_box.Box,
                        host_key: Path, gpus: int, report: dict, extras: list) -> list:
    """devbox's own connect (pin, entry), the session's environment, then verify_box and EXTRA_CHECKS."""
    from devbox.commands.up import connect
    from devbox.commands.verify import identity_for, verify_box
    from devbox.remote import Host
    from devbox.sshconfig import BOX_PREFIX

    started = time.monotonic()
    with Host(a.host) as host:
        identity = identity_for(host, spec, keys)
        steps = SimpleNamespace(steps=[])
        connect(host, SimpleNamespace(spec=spec), port, identity, False, steps, known_key=host_key.read_text().strip())
        report["connect_steps"] = steps.steps
        report["ssh_entry"] = (laptop.home / ".ssh/devbox/config").read_text()
        env_ok, report["session_env"] = session_env_ok(laptop, BOX_PREFIX + a.host)
        print(f"ssh {BOX_PREFIX}{a.host} env:", report["session_env"], flush=True)
        if not env_ok and gpus > 1:
            raise RuntimeError("NVLink multicast is not off in the box's sessions: NCCL is not run")
        checks = verify_box(host, spec, port, identity, keys.fingerprints, oci_box.inspect_view(argv))
        report["verify_seconds"] = round(time.monotonic() - started, 2)
        for extra in extras:
            checks += extra(host, spec, port, box.name, a.runc)
    return checks


def run_box(a: argparse.Namespace, work: Path, image: dict, laptop, keys_dir: Path, report: dict) -> list:
    """devbox's run arguments for this machine, translated, started, verified; the box is deleted after."""
    from devbox.keyset import desired_keys
    from devbox.plan import box_labels, choose_port, run_args

    spec, facts, keys = box_spec(a), machine_facts(), desired_keys(keys_dir)
    port, tag = choose_port(spec, facts), image["Tag"]
    argv = run_args(spec, facts, port, tag, box_labels(spec, port, tag, spec.spec_hash(port, tag), keys.fingerprint), None, "create")
    machine = read_machine(work, a.init)
    seccomp = a.carry / "box-seccomp.json"
    box = oci_box.translate(argv, image, machine, json.loads(seccomp.read_text()) if seccomp.exists() else None)
    report.update(spec=repr(spec), run_args=argv, machine=dataclasses.asdict(machine), notes=box.notes)
    print("docker " + " ".join(argv), "\nnote: " + "\nnote: ".join(box.notes), flush=True)
    print("== volumes, keys, config.json; runc run", flush=True)
    try:
        host_key = start_box(a, work, box, spec, keys.authorized_keys)
        inside = sh(a.runc, "exec", box.name, "sh", "-c", INSIDE)
        report["inside_runc_exec"] = inside.stdout + inside.stderr
        print(report["inside_runc_exec"], flush=True)
        extras = list(EXTRA_CHECKS)
        if spec.idle_stop:
            home = work / "volumes" / spec.volume_name(spec.all_volumes()[0])
            extras.append(functools.partial(box_idle.idle_checks, home=home, box_log=a.out / f"box-sshd{a.tag}.log",
                                            pid=int((work / "box.pid").read_text())))
        print("== devbox's connect (pin, ssh entry) and verify_box, through the host", flush=True)
        return verify_through_host(a, spec, port, keys, laptop, argv, box, host_key, len(machine.gpus), report, extras)
    finally:
        sh(a.runc, "delete", "-f", box.name)


def main() -> int:
    a = parse_args()
    from devbox import testbed
    from devbox.commands.verify import check_lines
    from devbox.verify import worst

    shutil.rmtree(a.work, ignore_errors=True)
    for folder in (a.work / "state", a.work / "volumes", a.out):
        folder.mkdir(parents=True, exist_ok=True)
    os.chmod(a.work, 0o755)
    report: dict = {"started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "kernel": platform.release()}
    t0 = time.monotonic()
    print("== rootfs from the carried image", flush=True)
    image = unpack(a.carry, a.work / "bundle" / "rootfs")
    report["image"] = {k: image.get(k) for k in ("Tag", "Env", "Entrypoint", "User", "WorkingDir", "Labels")}
    print("== the host (the test bed's fake host: sshd as root, key-only) and the laptop", flush=True)
    testbed.SSHD = os.environ.get("DEVBOX_SSHD", testbed.SSHD)   # the carried one (run_box_gpu.sh)
    bed = testbed.start_testbed(a.work / "bed", [a.host])
    checks = []
    try:
        laptop = testbed.make_laptop(a.work / "laptop", bed)
        os.environ["HOME"] = str(laptop.home)
        keys_dir = laptop.home / "keys"
        keys_dir.mkdir()
        shutil.copy(str(laptop.identity) + ".pub", keys_dir / "dev.pub")
        checks = run_box(a, a.work, image, laptop, keys_dir, report)
    except Exception as exc:   # the report is written whatever happened: a device run is not repeated lightly
        report["error"] = f"{type(exc).__name__}: {exc}"
        print("ERROR:", report["error"], flush=True)
    finally:
        bed.stop()
    lines = check_lines(checks)
    report.update(checks=[c.as_dict() for c in checks], lines=lines, exit_code=worst(checks) if checks else 1,
                  seconds=round(time.monotonic() - t0, 1))
    (a.out / f"box-verify{a.tag}.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"{a.host}: ({len(checks)} checks, {sum(c.status == 'ok' for c in checks)} ok)")
    print("\n".join(lines))
    return report["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
