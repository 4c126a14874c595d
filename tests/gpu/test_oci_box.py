"""oci_box.translate: devbox's own `docker create` argv as an OCI config, flag by flag (pure;
runs everywhere). The GPU evidence starts the box from this translation, so each hardening flag
run_args gives must land in the config, and a flag it does not know must stop the run."""
from __future__ import annotations

import dataclasses

import pytest

import oci_box
from devbox.commands.verify import expectations
from devbox.config import BoxSpec, Volume
from devbox.facts import Facts
from devbox.plan import run_args

FACTS = Facts(host_memory=128 << 30, host_cpus=16, memlock_max=-1, runtimes=("nvidia",))
MACHINE = oci_box.Machine(
    gpus=(("0", "GPU-aaaaaaaa-0000-0000-0000-000000000000", 0, "/proc/driver/nvidia/gpus/0000:0a:00.0"),
          ("1", "GPU-bbbbbbbb-0000-0000-0000-000000000000", 1, "/proc/driver/nvidia/gpus/0000:0b:00.0")),
    control_nodes={"/dev/nvidiactl": (195, 255), "/dev/nvidia-uvm": (235, 0)}, gpu_major=195,
    driver_files=(("/usr/local/nvidia/lib64/libcuda.so.580.159.04", "/usr/lib/x86_64-linux-gnu/libcuda.so.1"),),
    volumes="/w/volumes", state="/w/state", init="/t/tini-static")
IMAGE = {"Env": ["PATH=/opt/devbox/venv/bin:/usr/bin:/bin"], "Entrypoint": ["/usr/local/bin/devbox-entrypoint"],
         "User": "1000:1000", "WorkingDir": "/home/dev"}
SPEC = BoxSpec("device", volumes=(Volume("workspace", "/workspace"), Volume("/opt/torch/.venv", "/opt/devbox/venv", True)))


def argv(spec: BoxSpec = SPEC) -> list[str]:
    return run_args(spec, FACTS, 2201, "devbox-ssh:test", {"devbox.port": "2201"}, None, "create")


def mount(config: dict, target: str) -> dict:
    return next(m for m in config["mounts"] if m["destination"] == target)


def test_the_hardening_flags_land_in_the_oci_config():
    box = oci_box.translate(argv(), IMAGE, MACHINE)
    process, linux = box.config["process"], box.config["linux"]
    assert process["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [1000]}
    assert all(caps == [] for caps in process["capabilities"].values())
    assert process["noNewPrivileges"] is True
    assert box.config["root"]["readonly"] is True
    assert process["rlimits"] == [{"type": "RLIMIT_MEMLOCK", "soft": 2**64 - 1, "hard": 2**64 - 1}]
    assert process["args"] == [oci_box.INIT, "--", "/usr/local/bin/devbox-entrypoint"]   # --init
    assert mount(box.config, "/tmp")["options"] == ["rw", "exec", "nosuid", "nodev", "mode=1777"]
    shm = int(next(o for o in mount(box.config, "/dev/shm")["options"] if o.startswith("size="))[5:])
    assert shm == oci_box.size_bytes(argv()[argv().index("--shm-size") + 1]) and shm > 1 << 30
    assert linux["resources"]["pids"] == {"limit": 8192}
    assert linux["resources"]["cpu"] == {"shares": 512, "period": 100000, "quota": 1500000}
    assert linux["resources"]["memory"]["limit"] == oci_box.size_bytes(argv()[argv().index("--memory") + 1]) > 100 << 30
    assert {"type": "network"} in linux["namespaces"]
    assert box.publish == [("127.0.0.1", 2201, 2222)]


def test_volumes_named_ones_in_their_folder_host_paths_bound_read_only_as_asked():
    box = oci_box.translate(argv(), IMAGE, MACHINE)
    assert box.named_volumes == [(SPEC.volume_name(v), v.target) for v in SPEC.all_volumes() if v.is_named] + [
        (SPEC.keys_volume, "/etc/devbox/keys"), (SPEC.secrets_volume, "/etc/devbox/secrets")]
    assert mount(box.config, "/opt/devbox/venv") == {"destination": "/opt/devbox/venv", "type": "bind",
                                                     "source": "/opt/torch/.venv", "options": ["rbind", "rprivate", "ro"]}
    keys = mount(box.config, "/etc/devbox/keys")
    assert keys["source"].startswith("/w/volumes/") and "ro" in keys["options"]


def test_gpus_all_gives_every_gpu_and_device_list_gives_only_those():
    every = oci_box.translate(argv(), IMAGE, MACHINE)
    assert {d["path"] for d in every.config["linux"]["devices"]} == {"/dev/nvidia0", "/dev/nvidia1", "/dev/nvidiactl", "/dev/nvidia-uvm"}
    assert mount(every.config, "/usr/lib/x86_64-linux-gnu/libcuda.so.1")["options"][2] == "ro"
    one = oci_box.translate(argv(dataclasses.replace(SPEC, gpus=(1,))), IMAGE, MACHINE)
    assert {d["path"] for d in one.config["linux"]["devices"]} == {"/dev/nvidia1", "/dev/nvidiactl", "/dev/nvidia-uvm"}
    assert "NVIDIA_VISIBLE_DEVICES=GPU-bbbbbbbb-0000-0000-0000-000000000000" in one.config["process"]["env"]
    assert "/proc/driver/nvidia/gpus/0000:0a:00.0" in one.config["linux"]["maskedPaths"]   # GPU 0 hidden
    assert not any("nvidia" in p for p in every.config["linux"]["maskedPaths"])
    none = oci_box.translate(argv(dataclasses.replace(SPEC, gpus="none")), IMAGE, MACHINE)
    assert none.config["linux"]["devices"] == []


@pytest.mark.parametrize("extra", [["--privileged"], ["--cap-add", "SYS_ADMIN"], ["--security-opt", "seccomp=unconfined"],
                                   ["--ipc", "host"]])
def test_a_flag_the_translation_does_not_know_stops_the_run(extra):
    args = argv()
    with pytest.raises(oci_box.UnknownFlag):
        oci_box.translate(args[:1] + extra + args[1:], IMAGE, MACHINE)


def test_verify_expects_the_limits_the_argv_gave():
    expect = expectations(SPEC, oci_box.inspect_view(argv()))
    assert expect.memlock is None   # memlock=-1: unlimited
    assert expect.shm_kib == oci_box.size_bytes(argv()[argv().index("--shm-size") + 1]) // 1024


def test_idle_stop_reaches_the_box_as_its_environment_and_the_restart_policy_is_noted():
    idle = dataclasses.replace(SPEC, idle_stop=20, idle_gpu_util=7)
    box = oci_box.translate(argv(idle), IMAGE, MACHINE)
    env = box.config["process"]["env"]
    assert "DEVBOX_IDLE_STOP=20" in env and "DEVBOX_IDLE_GPU_UTIL=7" in env
    assert env[0] == IMAGE["Env"][0]   # the image's own environment stays
    assert any(note.startswith("--restart on-failure") for note in box.notes)
    args = argv()
    with pytest.raises(oci_box.UnknownFlag):   # `--env NAME` would copy the client's variable
        oci_box.translate(args[:1] + ["--env", "HOME"] + args[1:], IMAGE, MACHINE)
