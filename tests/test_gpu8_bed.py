"""The 8-GPU host of the test bed (devbox/testbed.py, "A host with GPUs to share"): its own
dockerd where `--gpus` works, a fake nvidia-smi on the host and one planted in each box
with GPUs, utilisation the tests set. Checked against nvidia-smi recorded on a real H200
and through today's devbox (`up`, `top`), so the GPU-sharing tests stand on firm ground."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

import testbed as tb

def recorded_answers() -> list[tuple[str, str, str, str, int]]:
    """nvidia-smi-h200-answers.txt as (state, uuid, `nvidia-smi ARGS`, output, exit code)."""
    answers, state, uuid = [], "", ""
    text = (tb.FIXTURES / "nvidia-smi-h200-answers.txt").read_text()
    for part in re.split(r"^(## \w+ \S+)$", text, flags=re.M):
        if part.startswith("## "):
            _, state, uuid = part.split()
            continue
        for command, output, rc in re.findall(r"^\$ (nvidia-smi[^\n]*)\n(.*?)\n?== rc (\d+)$", part, re.M | re.S):
            answers.append((state, uuid, command, output, int(rc)))
    return answers


def one_h200(tmp_path: Path, state: str, uuid: str) -> Path:
    """The fake set up as one recorded H200; busy = the recording's torch process at 100 %."""
    bed = tb.GpuBed(tmp_path / f"{state}-{uuid}", [tb.FakeGpu(0, uuid, "00000000:00:06.0", "1653724000133")])
    if not bed.root.exists():
        bed.root.mkdir()
        tb.write_gpu_data(bed.state, bed.gpus, renumber=False)
        tb.write_smi(bed.smi_bin / "nvidia-smi", str(bed.state))
        bed.set_util(0, 100 if state == "busy" else 0)
        bed.set_processes(0, [(508, 4458, "python3")] if state == "busy" else [])
    return bed.smi_bin / "nvidia-smi"


def run_smi(smi: Path, command: str) -> tuple[str, int]:
    done = subprocess.run([str(smi), *shlex.split(command)[1:]], capture_output=True, text=True)
    return done.stdout + done.stderr, done.returncode


def without_readings(text: str) -> str:
    """A banner without the time of the call and the sensors' temperature and power (they
    drift: a GPU just left by a job is warmer), each cell kept at its width."""
    text = re.sub(r"^\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}", "TIME", text, flags=re.M)
    return re.sub(r"N/A +\d+C +P0 +\d+W /", lambda m: "N/A (readings) /".rjust(len(m.group())), text)


def test_the_fake_answers_every_recorded_query_as_the_real_h200_did(tmp_path):
    """Same text, same exit code: banners, -L, process lists, -i/--id, and every refusal.
    The full-field queries are the next test (their sensor readings drift)."""
    compared = 0
    for state, uuid, command, output, rc in recorded_answers():
        if "power.draw" in command and rc == 0:
            continue
        got, code = run_smi(one_h200(tmp_path, state, uuid), command)
        assert (without_readings(got).rstrip("\n"), code) == (without_readings(output).rstrip("\n"), rc), command
        compared += 1
    assert compared >= 25


def test_the_fake_gives_every_field_in_the_recorded_shape(tmp_path):
    """Units, headers and columns as recorded; temperature and power (sensor readings)
    follow the utilisation instead, so only their shape is compared."""
    fields = [a for a in recorded_answers() if "power.draw" in a[2] and a[4] == 0]
    assert len(fields) == 4
    for state, uuid, command, output, rc in fields:
        got, code = run_smi(one_h200(tmp_path, state, uuid), command)
        assert code == 0
        for want_line, got_line in zip(output.splitlines(), got.splitlines(), strict=True):
            want, have = want_line.split(", "), got_line.split(", ")
            if want[0] != "index":          # a row: temperature and power are columns 10 and 11
                assert re.fullmatch(r"\d+", have[10]) and re.fullmatch(r"\d+\.\d\d( W)?", have[11]), got_line
                want[10:12] = have[10:12]
            assert have == want, command


def run_hook(tmp_path: Path, env: list[str], stdin: str | None = None) -> tuple[int, Path]:
    """gpu_hook as runc calls it, on a bundle of a container with `env`: (exit code, its root)."""
    import io

    state, bundle = tmp_path / "state", tmp_path / "bundle"
    if not state.exists():
        tb.write_gpu_data(state, tb.h200_gpus(8), renumber=False)
        (bundle / "rootfs").mkdir(parents=True)
    (bundle / "config.json").write_text(json.dumps({"root": {"path": "rootfs"}, "process": {"env": env}}))
    code = tb.gpu_hook(["prestart"], io.StringIO(json.dumps({"bundle": str(bundle)}) if stdin is None else stdin), str(state))
    return code, bundle / "rootfs"


def test_the_hook_leaves_a_container_that_asked_for_no_gpus_as_it_was(tmp_path):
    for env in ([], ["PATH=/bin"], ["NVIDIA_VISIBLE_DEVICES="], ["NVIDIA_VISIBLE_DEVICES=void"], ["NVIDIA_VISIBLE_DEVICES=none"]):
        code, root = run_hook(tmp_path, env)
        assert code == 0 and not any(root.iterdir()), env
    for garbage in ("not json", "{}", '{"bundle": "/nonexistent"}'):
        code, root = run_hook(tmp_path, [], stdin=garbage)
        assert code == 0 and not any(root.iterdir()), garbage


def test_the_hook_gives_a_box_its_gpus_by_index_or_uuid_and_refuses_one_the_host_lacks(tmp_path, capsys):
    gpus = tb.h200_gpus(8)
    code, root = run_hook(tmp_path, ["PATH=/bin", f"NVIDIA_VISIBLE_DEVICES=6,{gpus[3].uuid}"])
    rows = (root / tb.BOX_GPU_DATA.lstrip("/") / "gpus").read_text().splitlines()
    assert code == 0 and [r.split("\t")[:3] for r in rows] == [["0", "6", gpus[6].uuid], ["1", "3", gpus[3].uuid]]
    assert (root / "usr/bin/nvidia-smi").stat().st_mode & 0o777 == 0o755
    code, _ = run_hook(tmp_path, ["NVIDIA_VISIBLE_DEVICES=GPU-ffffffff-0000-0000-0000-000000000000"])
    assert code == 1 and "device error: GPU-ffffffff-0000-0000-0000-000000000000: unknown device" in capsys.readouterr().err


def test_an_image_whose_symlinks_lead_out_of_its_root_cannot_aim_the_hook_at_the_host(tmp_path, capsys):
    """The hook writes as the host's root: an image with /usr/share (or the nvidia-smi path)
    pointing outside must get nothing written there, and the box does not start."""
    outside = tmp_path / "host-etc"
    outside.mkdir()
    (outside / "passwd").write_text("root:x:0:0\n")
    run_hook(tmp_path, [])
    root = tmp_path / "bundle" / "rootfs"
    (root / "usr").mkdir()
    (root / "usr/share").symlink_to(outside)
    code, _ = run_hook(tmp_path, ["NVIDIA_VISIBLE_DEVICES=0"])
    assert code == 1 and "leads out of the container's root" in capsys.readouterr().err
    (root / "usr/share").unlink()
    (root / "usr/share").mkdir()
    (root / "usr/bin").mkdir()
    (root / "usr/bin/nvidia-smi").symlink_to(outside / "passwd")   # the file itself a link: replaced, not followed
    (root / "usr/share/devbox-fake-gpu").symlink_to(outside)
    code, _ = run_hook(tmp_path, ["NVIDIA_VISIBLE_DEVICES=0"])
    assert code == 0 and sorted(p.name for p in outside.iterdir()) == ["passwd"]
    assert (outside / "passwd").read_text() == "root:x:0:0\n" and not (root / "usr/bin/nvidia-smi").is_symlink()
    assert (root / "usr/share/devbox-fake-gpu/gpus").read_text().startswith("0\t0\t")


def test_top_once_json_shows_the_eight_gpus_and_the_utilisation_set_on_the_host(gpu8_laptop):
    laptop, bed = gpu8_laptop, gpu8_laptop.gpus
    bed.set_util(5, 73)
    bed.set_processes(5, [(4242, 20480, "python3")])
    rows, _ = laptop.devbox.json("top", laptop.gpu8, "--once")
    gpus = rows[0]["gpus"]
    assert [g["index"] for g in gpus] == list(range(8)) and len({g["uuid"] for g in gpus}) == 8
    assert {g["name"] for g in gpus} == {"NVIDIA H200"} and {g["memory_total_mib"] for g in gpus} == {143771}
    assert [g["utilization_pct"] for g in gpus] == [0, 0, 0, 0, 0, 73, 0, 0]
    assert gpus[5]["processes"] == [{"pid": 4242, "memory_mib": 20480, "box": "", "job": ""}]
    assert gpus[5]["memory_used_mib"] == 20480 + 9 and gpus[4]["memory_used_mib"] == 0


def up_with_gpus(laptop, gpus: str) -> tuple[str, list[dict]]:
    """`devbox up` of the 8-GPU host's default box with `gpus = <gpus>` (TOML): its container
    and the up report. The box has no torch, so verify's torch checks fail (exit 1); the
    box itself must come up without an error."""
    (laptop.work / "devbox.toml").write_text(f'[defaults]\nplaybook = "cpu"\nbase_image = "{tb.BASE_IMAGE}"\n'
                                             f"[hosts.{laptop.gpu8}]\ngpus = {gpus}\n")
    reports, done = laptop.devbox.json("up", laptop.gpu8, expect=None)
    assert reports[0]["error"] == "", done.stdout + done.stderr
    return f"devbox-{laptop.gpu8}", reports


@pytest.mark.parametrize("gpus, expected", [("[1, 3]", "1,3"), ('"all"', "all")])
def test_up_gives_the_default_box_exactly_the_gpus_asked_and_its_nvidia_smi_lists_only_them(gpu8_laptop, gpus, expected):
    laptop, bed = gpu8_laptop, gpu8_laptop.gpus
    box, reports = up_with_gpus(laptop, gpus)
    assert bed.visible_devices(box) == expected
    held = [1, 3] if expected == "1,3" else list(range(8))
    checks = {c["name"]: c for c in reports[0]["checks"]}
    assert checks["nvidia-smi"]["status"] == "ok" and checks["nvidia-smi"]["detail"].count("NVIDIA H200") == len(held)
    # As the user sees it: ssh into the box; numbered from 0, the host's UUIDs and bus ids.
    listed = laptop.ssh(box, "nvidia-smi --query-gpu=index,uuid,pci.bus_id --format=csv,noheader")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == [f"{i}, {bed.gpus[h].uuid}, {bed.gpus[h].bus_id}" for i, h in enumerate(held)]
    assert "No devices were found" in laptop.ssh(box, f"nvidia-smi -i {len(held)}").stdout


def test_utilisation_is_reported_in_and_out_of_the_box(gpu8_laptop):
    laptop, bed = gpu8_laptop, gpu8_laptop.gpus
    box, _ = up_with_gpus(laptop, "[1, 3]")
    query = ("--query-gpu=index,utilization.gpu", "--format=csv,noheader,nounits")

    bed.set_util(3, 87)                    # the host's GPU 3 is the box's GPU 1
    assert bed.box_smi(box, *query).stdout.splitlines() == ["0, 0", "1, 87"]
    rows, _ = laptop.devbox.json("top", laptop.gpu8, "--once")
    assert [g["utilization_pct"] for g in rows[0]["gpus"]] == [0, 0, 0, 87, 0, 0, 0, 0]

    bed.set_box_util(box, 0, 55)           # a job in the box loads its GPU 0 (the host's 1)
    assert bed.box_smi(box, *query).stdout.splitlines() == ["0, 55", "1, 87"]
    assert laptop.ssh(box, "cat /tmp/devbox-fake-gpu-util").stdout == "0 55\n"    # the box user's own file
    assert "<gpu_util>55 %</gpu_util>" in laptop.ssh(box, "nvidia-smi -q -x -i 0").stdout
    bed.set_util(3, 0)
    assert bed.box_smi(box, *query).stdout.splitlines() == ["0, 55", "1, 0"]


def test_a_box_can_neither_change_its_planted_nvidia_smi_nor_the_hosts_readings(gpu8_laptop):
    laptop, bed = gpu8_laptop, gpu8_laptop.gpus
    done = bed.engine.docker("run", "-d", "--name", "gpu-attempt", "--read-only", "--tmpfs", "/tmp", "--user", "1000:1000",
                             "--gpus", '"device=2"', tb.BASE_IMAGE, "sleep", "300")
    assert done.returncode == 0, done.stderr
    tamper = bed.engine.docker("exec", "gpu-attempt", "sh", "-c",
                               f"echo 99 > {tb.BOX_GPU_DATA}/util/2 || echo x >> /usr/bin/nvidia-smi")
    assert tamper.returncode != 0 and "Read-only file system" in tamper.stderr
    assert bed.smi("-i", "2", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits").stdout == "0\n"


def test_a_container_with_no_gpus_starts_untouched_and_an_unknown_gpu_fails_like_the_toolkit(gpu8_laptop):
    bed = gpu8_laptop.gpus
    for gpus in ([], ["--gpus", "0"]):
        plain = bed.engine.docker("run", "--rm", *gpus, tb.BASE_IMAGE, "sh", "-c",
                                  'echo "env=${NVIDIA_VISIBLE_DEVICES-unset}"; ls /usr/bin/nvidia-smi /usr/share/devbox-fake-gpu')
        assert "env=unset" in plain.stdout and "No such file" in plain.stderr, (gpus, plain.stdout, plain.stderr)
    lacking = bed.engine.docker("run", "--rm", "--gpus", '"device=8"', tb.BASE_IMAGE, "true")
    assert lacking.returncode != 0 and "nvidia-container-cli: device error: 8: unknown device" in lacking.stderr
    info = json.loads(bed.engine.docker("info", "--format", "{{json .Runtimes}}").stdout)
    assert "nvidia" in info      # what devbox's preflight asks of a GPU host


def test_a_stopped_box_started_again_has_its_nvidia_smi_and_the_readings_of_now(gpu8_laptop):
    """What an idle-stopped box needs from `up`: the hook plants again at every start."""
    bed = gpu8_laptop.gpus
    query = ("--query-gpu=index,utilization.gpu", "--format=csv,noheader,nounits")
    done = bed.engine.docker("run", "-d", "--name", "gpu-restart", "--read-only", "--tmpfs", "/tmp", "--gpus", '"device=4"',
                             tb.BASE_IMAGE, "sleep", "300")
    assert done.returncode == 0, done.stderr
    assert bed.box_smi("gpu-restart", *query).stdout == "0, 0\n"
    assert bed.engine.docker("stop", "-t", "0", "gpu-restart").returncode == 0
    bed.set_util(4, 40)                    # while it is stopped: only the next start can tell it
    assert bed.engine.docker("start", "gpu-restart").returncode == 0
    assert bed.box_smi("gpu-restart", *query).stdout == "0, 40\n"
    assert bed.visible_devices("gpu-restart") == "4"


def test_boxes_asking_by_count_and_by_index_on_one_host_get_disjoint_gpus(gpu8_laptop):
    """The issue's three people, by what Docker gave each box (the hook's view); this bed
    found placement losing the last holder row (carol given alice's GPUs 0,1)."""
    laptop, bed = gpu8_laptop, gpu8_laptop.gpus
    asks = {"alice": "2", "bob": "[2, 3]", "carol": "4", "dave": "2"}
    tables = [f'[defaults]\nplaybook = "cpu"\nbase_image = "{tb.BASE_IMAGE}"\n']
    for who, gpus in asks.items():
        key = tb.keygen(laptop.home / f"{who}_ed25519", who)
        assert laptop.devbox("keys", "add", who, f"{key}.pub").returncode == 0
        tables.append(f'[boxes.{who}-8]\nhost = "{laptop.gpu8}"\nowner = "{who}"\nidentity = "{key}"\ngpus = {gpus}\n')
    (laptop.work / "devbox.toml").write_text("".join(tables))
    held = {}
    for who in ("alice", "bob", "carol"):
        done = laptop.devbox("up", f"{who}-8")
        assert done.returncode in (0, 1), done.stdout + done.stderr      # 1: no torch in the box
        held[who] = bed.visible_devices(f"devbox-{who}-8").split(",")
    assert held["bob"] == ["2", "3"] and len(held["alice"]) == 2 and len(held["carol"]) == 4
    assert sorted(sum(held.values(), [])) == [str(i) for i in range(8)], held
    refused = laptop.devbox("up", "dave-8")
    assert refused.returncode == 3 and "alice" in refused.stdout + refused.stderr
