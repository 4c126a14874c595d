"""GPU placement on a shared host (issue 20 item 3): pure, from recorded facts."""
from __future__ import annotations

import pytest

from devbox.config import BoxSpec
from devbox.errors import DevboxError
from devbox.facts import Facts, Gpu
from devbox.placement import _ranges, as_before, parse_gpu_processes, parse_holders, place_gpus

UUIDS = [f"GPU-{i:08x}-0000-0000-0000-000000000000" for i in range(8)]
GPUS = tuple(Gpu(i, "NVIDIA H200", "580.1", 143771, UUIDS[i], "9.0") for i in range(8))


def holder_rows(*rows: tuple[str, str, str, str]) -> str:
    """`docker ps` rows as the holders question prints them; the last one stripped as parse_sections does."""
    lines = [f"{i:064x}\tdevbox-{box}\t{box}\t{owner}\t{gpus}\t{shared}" for i, (box, owner, gpus, shared) in enumerate(rows)]
    return "\n".join(lines).strip()


def facts(*rows, box_labels: dict | None = None, processes: str = "") -> Facts:
    found = Facts(docker_version="24.0", host_checked=True, gpus=GPUS, gpu_holders=parse_holders(holder_rows(*rows)),
                  gpu_processes=parse_gpu_processes(processes))
    if box_labels is not None:
        found.box = {"Config": {"Labels": box_labels}, "State": {"Running": True}}
    return found


def spec(name: str, gpus, shared: bool = False) -> BoxSpec:
    return BoxSpec("gpu-host-3", name=name, owner=name, admits=(name,), gpus=gpus, shared=shared)


def test_the_last_holder_row_counts_even_with_its_empty_labels_stripped():
    found = facts(("alice", "alice", "0,1", ""))
    assert [h.box for h in found.gpu_holders] == ["alice"]
    placed, _ = place_gpus(spec("carol", 4), found)
    assert placed.gpus == (2, 3, 4, 5) and placed.gpu_count == 4


def test_counts_and_lists_get_disjoint_gpus_and_a_fourth_is_refused_naming_the_holders():
    found = facts(("alice", "alice", "0,1", ""), ("bob", "bob", "2,3", ""), ("carol", "carol", "4,5,6,7", ""))
    with pytest.raises(DevboxError) as refused:
        place_gpus(spec("dave", 2), found)
    assert "2 GPU(s) asked for, 0 free" in refused.value.message and "box alice (alice) holds 0, 1" in refused.value.message
    assert refused.value.exit_code == 3


def test_an_index_list_that_overlaps_names_the_box_and_the_free_gpus():
    found = facts(("bob", "bob", "2,3", ""))
    with pytest.raises(DevboxError) as refused:
        place_gpus(spec("alice", (1, 2)), found)
    assert "GPU 2 held by box bob (bob)" in refused.value.message and "free GPUs on gpu-host-3: 0, 1, 4-7" in refused.value.message
    assert "shared = true" in refused.value.remedy


def test_uuids_and_all_collide_like_indices():
    found = facts(("bob", "bob", UUIDS[5], ""))
    with pytest.raises(DevboxError):
        place_gpus(spec("alice", (5,)), found)
    with pytest.raises(DevboxError):
        place_gpus(spec("alice", "all"), found)
    with pytest.raises(DevboxError):
        place_gpus(spec("alice", (UUIDS[5],)), facts(("bob", "bob", "5", "")))


def test_shared_boxes_share_only_with_each_other():
    found = facts(("bob", "bob", "all", "true"))
    assert place_gpus(spec("alice", (0,), shared=True), found)[0].gpus == (0,)
    with pytest.raises(DevboxError):
        place_gpus(spec("alice", (0,)), found)


def test_a_count_keeps_its_gpus_across_re_runs_and_moves_when_they_were_taken():
    labels = {"devbox.gpus": "4,5", "devbox.gpu-count": "2"}
    assert as_before(spec("alice", 2), facts(box_labels=labels)).gpus == (4, 5)
    placed, _ = place_gpus(spec("alice", 2), facts(("alice", "alice", "4,5", ""), box_labels=labels))
    assert placed.gpus == (4, 5), "its own row is not a holder against itself"
    moved, _ = place_gpus(spec("alice", 2), facts(("bob", "bob", "4", ""), box_labels=labels))
    assert moved.gpus == (0, 1)


def test_a_gpu_busy_outside_any_box_is_a_warning_naming_the_pid():
    found = facts(("bob", "bob", "2", ""), processes=f"4242\t{UUIDS[0]}\t\n777\t{UUIDS[2]}\t{2:064x}\n")
    placed, warnings = place_gpus(spec("alice", (0, 1)), found)
    assert placed.gpus == (0, 1)
    assert len(warnings) == 1 and "GPU 0 is busy with PID 4242" in warnings[0]


def test_before_the_host_is_checked_nothing_is_placed():
    assert place_gpus(spec("alice", 2), Facts(docker_version="24.0"))[0].gpus == 2


def test_ranges():
    assert _ranges([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7, 8" and _ranges([]) == "none"
