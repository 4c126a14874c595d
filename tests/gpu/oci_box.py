"""Stretch (issue 12): the real box image under a container engine brought along (runc) on a
GPU machine without Docker, with the GPUs passed in, then devbox's verify checks over SSH.

`config BUNDLE HOME KEYS`: an OCI config.json made from the very `docker create` argv that
devbox.plan.run_args gives this machine (user, no capabilities, no-new-privileges, read-only
root, /tmp tmpfs, pids limit, --shm-size, --ulimit memlock, mounts), translated flag by flag,
plus what nvidia-container-toolkit adds for `--gpus all` (device nodes, nvidia-smi and the
driver's NVML/CUDA libraries bound in). Host networking: the machine has no `ip` for a bridge.
`verify PORT HOSTKEY KEY`: devbox.verify.run_checks against the box's sshd, printed as JSON.
"""
from __future__ import annotations

import glob
import json
import os
import sys


def run_argv() -> list[str]:
    from devbox.config import BoxSpec
    from devbox.facts import Facts
    from devbox.plan import run_args

    memlock = open("/proc/self/limits").read().split("Max locked memory")[1].split()[1]
    facts = Facts(host_memory=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), host_cpus=os.cpu_count(),
                  memlock_max=-1 if memlock == "unlimited" else int(memlock), runtimes=("nvidia",))
    return run_args(BoxSpec("device", gpus="all", volumes=()), facts, 2222, "devbox-ssh:device", {}, "devbox-device", "create")


def size(text: str) -> int:
    from devbox.plan import size_bytes
    return size_bytes(text)


def config(bundle: str, home: str, keys: str) -> dict:
    argv = run_argv()
    value = lambda flag: [argv[i + 1] for i, a in enumerate(argv) if a == flag]  # noqa: E731
    uid, gid = (int(x) for x in value("--user")[0].split(":"))
    memlock = value("--ulimit")[0].split("=", 1)[1].split(":")[0]
    limit = 2**64 - 1 if memlock == "-1" else int(memlock)
    mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", f"size={size(value('--shm-size')[0])}"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["rw", "nosuid", "nodev", "mode=1777"]},
        {"destination": f"/home/{os.environ.get('BOX_USER', 'dev')}", "type": "bind", "source": home, "options": ["rbind", "rw"]},
        {"destination": "/etc/devbox/keys", "type": "bind", "source": keys, "options": ["rbind", "ro"]},
        {"destination": "/etc/resolv.conf", "type": "bind", "source": "/etc/resolv.conf", "options": ["rbind", "ro"]},
    ]
    # --gpus all, as nvidia-container-toolkit does it: the device nodes, nvidia-smi, the driver libraries.
    devices = [{"path": d, "type": "c", "major": os.major(os.stat(d).st_rdev), "minor": os.minor(os.stat(d).st_rdev),
                "fileMode": 0o666, "uid": 0, "gid": 0} for d in sorted(glob.glob("/dev/nvidia*")) if not os.path.isdir(d)]
    smi = next((p for p in ("/usr/local/nvidia/bin/nvidia-smi", "/usr/bin/nvidia-smi") if os.path.exists(p)), None)
    if smi:
        mounts.append({"destination": "/usr/local/bin/nvidia-smi", "type": "bind", "source": smi, "options": ["rbind", "ro"]})
    for lib in sorted(set(glob.glob("/usr/local/nvidia/lib64/libnvidia-ml.so*") + glob.glob("/usr/local/nvidia/lib64/libcuda.so*")
                          + glob.glob("/lib/x86_64-linux-gnu/libnvidia-ml.so*") + glob.glob("/lib/x86_64-linux-gnu/libcuda.so*"))):
        target = "/usr/lib/x86_64-linux-gnu/" + os.path.basename(lib)
        if target not in {m["destination"] for m in mounts}:
            mounts.append({"destination": target, "type": "bind", "source": os.path.realpath(lib), "options": ["rbind", "ro"]})
    no_caps = {k: [] for k in ("bounding", "effective", "inheritable", "permitted", "ambient")}
    return {
        "ociVersion": "1.0.2",
        "process": {"terminal": False, "user": {"uid": uid, "gid": gid}, "cwd": "/",
                    "args": ["/usr/local/bin/devbox-entrypoint"],
                    "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", f"HOME=/home/{os.environ.get('BOX_USER', 'dev')}"],
                    "capabilities": no_caps, "noNewPrivileges": "no-new-privileges" in value("--security-opt"),
                    # Only what `docker create` asks for: a NOFILE above the machine's own hard limit fails
                    # the start here ("error setting rlimit type 7"), as memlock does on a limited engine.
                    "rlimits": [{"type": "RLIMIT_MEMLOCK", "hard": limit, "soft": limit}]},
        "root": {"path": "rootfs", "readonly": "--read-only" in argv},
        "hostname": value("--hostname")[0],
        "mounts": mounts,
        "linux": {"namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")],
                  "devices": devices,
                  "resources": {"devices": [{"allow": False, "access": "rwm"}] + [
                      {"allow": True, "type": "c", "major": d["major"], "minor": d["minor"], "access": "rwm"} for d in devices]
                      + [{"allow": True, "type": "c", "major": 1, "minor": m, "access": "rwm"} for m in (3, 5, 8, 9)]
                      + [{"allow": True, "type": "c", "major": 5, "minor": m, "access": "rwm"} for m in (0, 1, 2)]
                      + [{"allow": True, "type": "c", "major": 136, "access": "rwm"}],
                      "pids": {"limit": int(value("--pids-limit")[0])}},
                  "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
                  "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]},
        "annotations": {"devbox.run_args": " ".join(argv)},
    }


def verify(port: int, host_key: str, key_file: str) -> list[dict]:
    import socket

    from devbox.verify import BoxSession, Expectations, load_identity, run_checks

    user = os.environ.get("BOX_USER", "dev")
    session = BoxSession(lambda: socket.create_connection(("127.0.0.1", port), 10), host_key.strip(), user,
                         load_identity(__import__("pathlib").Path(key_file)), f"[127.0.0.1]:{port}")
    try:
        session.login()
        return [c.as_dict() for c in run_checks(session, Expectations(user, 1000, 1000, (("/home/" + user, False),), None))]
    finally:
        session.close()


if __name__ == "__main__":
    if sys.argv[1] == "config":
        json.dump(config(*sys.argv[2:5]), sys.stdout, indent=1)
    else:
        print(json.dumps(verify(int(sys.argv[2]), sys.argv[3], sys.argv[4]), indent=1))
