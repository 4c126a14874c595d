"""GPUs that never collide and idle boxes that give them back (issue 20 items 3 and 5), on the
8-GPU host of the bed: real dockerd with `--gpus`, each box's NVIDIA_VISIBLE_DEVICES as Docker
set it, utilisation set on the host and read by the box's own watcher."""
from __future__ import annotations

import json
import subprocess
import time

import testbed as tb

PEOPLE = ("alice", "bob", "carol", "dave", "erin")


def team_config(laptop, asks: dict[str, str], extra: str = "") -> None:
    """A box `<who>-8` per person on the 8-GPU host; `me` (the laptop's key) is the admin."""
    if laptop.devbox("keys", "list").stdout.count(" me ") == 0:
        assert laptop.devbox("keys", "add", "me", f"{laptop.identity}.pub").returncode == 0
    tables = [f'admins = ["me"]\n[defaults]\nplaybook = "cpu"\nbase_image = "{tb.BASE_IMAGE}"\n']
    for who, gpus in asks.items():
        tables.append(f'[boxes.{who}-8]\nhost = "{laptop.gpu8}"\nowner = "me"\ngpus = {gpus}\n{extra}')
    (laptop.work / "devbox.toml").write_text("".join(tables))


def up(laptop, *names: str, expect=(0, 1)) -> list[dict]:
    """`devbox up` (no torch in the bed's image: verify's torch checks fail with exit 1)."""
    reports, done = laptop.devbox.json("up", *names, "--no-verify", expect=None)
    assert done.returncode in expect, done.stdout + done.stderr
    return reports


def test_two_ups_at_once_never_pick_the_same_gpu_and_a_late_one_is_refused_naming_the_holders(gpu8_laptop):
    laptop, bed = gpu8_laptop, gpu8_laptop.gpus
    team_config(laptop, {who: "2" for who in PEOPLE})
    # four separate `devbox up` processes at once, each asking for any two free GPUs
    runs = [subprocess.Popen([*laptop.devbox.argv, "up", f"{who}-8", "--no-verify", "--json"], cwd=laptop.work,
                             env=laptop.devbox.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for who in PEOPLE[:4]]
    outputs = [run.communicate(timeout=600) for run in runs]
    assert all(run.returncode == 0 for run in runs), outputs
    held = {who: bed.visible_devices(f"devbox-{who}-8").split(",") for who in PEOPLE[:4]}
    assert sorted(sum(held.values(), [])) == [str(i) for i in range(8)], held
    late = laptop.devbox("up", "erin-8", "--no-verify")
    assert late.returncode == 3, late.stdout + late.stderr
    assert "2 GPU(s) asked for, 0 free" in late.stdout and "box alice-8" in late.stdout
    again = up(laptop, "alice-8", expect=(0,))
    assert not again[0]["changed"] and bed.visible_devices("devbox-alice-8").split(",") == held["alice"], "a count keeps its GPUs"
    rows, _ = laptop.devbox.json("status", laptop.gpu8)
    gpus = {r["host"]: r["gpus"] for r in rows}
    assert {gpus[f"{who}-8"] for who in PEOPLE[:4]} == {",".join(h) for h in held.values()}
    top, _ = laptop.devbox.json("top", laptop.gpu8, "--once")
    by_index = {g["index"]: g["held_by"] for g in top[0]["gpus"]}
    assert by_index[int(held["bob"][0])] == ["bob-8 (me)"]


def test_an_explicit_list_that_overlaps_is_refused_and_shared_boxes_may_share(gpu8_laptop):
    laptop, bed = gpu8_laptop, gpu8_laptop.gpus
    team_config(laptop, {"alice": "[2, 3]", "bob": "[3, 4]"})
    up(laptop, "alice-8")
    refused = laptop.devbox("up", "bob-8", "--no-verify")
    assert refused.returncode == 3 and "GPU 3 held by box alice-8 (me)" in refused.stdout, refused.stdout
    assert "free GPUs" in refused.stdout and not _state("devbox-bob-8", bed)
    team_config(laptop, {"alice": "[2, 3]", "bob": "[3, 4]"}, extra="shared = true\n")
    up(laptop, "alice-8")                  # re-created as shared (the flag is part of its spec)
    up(laptop, "bob-8")
    assert bed.visible_devices("devbox-bob-8") == "3,4" and bed.visible_devices("devbox-alice-8") == "2,3"


def test_a_gpu_busy_outside_any_box_is_a_warning_naming_its_pid(gpu8_laptop):
    laptop, bed = gpu8_laptop, gpu8_laptop.gpus
    team_config(laptop, {"alice": "[6]"})
    bed.set_processes(6, [(31337, 4096, "python3")])
    reports = up(laptop, "alice-8")
    assert any("GPU 6 is busy with PID 31337" in w for w in reports[0]["warnings"]), reports[0]["warnings"]


def _state(name: str, bed) -> dict:
    return (json.loads(bed.engine.docker("inspect", name).stdout or "[]") or [{}])[0].get("State", {})


def test_a_busy_gpu_keeps_a_box_up_and_an_idle_one_gives_its_gpus_to_the_next_person(gpu8_laptop):
    laptop, bed = gpu8_laptop, gpu8_laptop.gpus
    team_config(laptop, {"alice": "2"}, extra='idle_stop = "6s"\n')
    up(laptop, "alice-8")
    mine = [int(i) for i in bed.visible_devices("devbox-alice-8").split(",")]
    bed.set_util(mine[0], 90)
    time.sleep(14)                                  # two windows and more
    assert _state("devbox-alice-8", bed).get("Running"), "a busy GPU keeps the box up"
    rows, _ = laptop.devbox.json("status", "alice-8")
    assert "GPU 0 at 90 %" in rows[0]["kept_up_by"], rows[0]
    bed.set_util(mine[0], 0)
    deadline = time.monotonic() + 40
    while _state("devbox-alice-8", bed).get("Running") and time.monotonic() < deadline:
        time.sleep(0.5)
    state = _state("devbox-alice-8", bed)
    assert state.get("Status") == "exited" and state.get("ExitCode") == 0, state
    # her GPUs are free again: bob asks for exactly those, and gets them
    team_config(laptop, {"alice": "2", "bob": f"[{mine[0]}, {mine[1]}]"}, extra='idle_stop = "6s"\n')
    up(laptop, "bob-8")
    assert bed.visible_devices("devbox-bob-8") == f"{mine[0]},{mine[1]}"
    # alice comes back on two other free GPUs (she asked by count); volumes and pin kept
    back = up(laptop, "alice-8")
    assert back[0]["error"] == ""
    now = [int(i) for i in bed.visible_devices("devbox-alice-8").split(",")]
    assert len(now) == 2 and not set(now) & set(mine)
    assert laptop.ssh("devbox-alice-8", "true").returncode == 0, "same pin, no host-key prompt"
