"""Many hosts at once: bounded parallelism, one result per host in the order given, and a
host that drops every packet reported after its ConnectTimeout without holding up the rest."""
from __future__ import annotations

import hashlib
import shutil
import threading
import time

import pytest

from conftest import HOST1, HOST2, SUFFIX, _require
import testbed as tb
from devbox.boxid import BoxId
from devbox.errors import HostUnreachable
from devbox.result import HostResult, for_each_host

DEAD_TIMEOUT = 4   # the dead hosts' ConnectTimeout (s)


# ---------------------------------------------------------------- pure: the worker pool


class Item:
    """What for_each_host needs of a spec: its host and its box's name."""

    def __init__(self, host: str):
        self.host = host
        self.box = BoxId.default(host)


def test_for_each_host_runs_at_most_max_workers_at_once_in_the_given_order():
    lock, running, peak = threading.Lock(), [0], [0]

    def work(item, result):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        if item.host == "h3":
            raise HostUnreachable("h3: no answer", "check it")
        result.changed = True

    items = [Item(f"h{i}") for i in range(10)]
    results = for_each_host(items, HostResult.start, work, max_workers=3)
    assert [r.host for r in results] == [i.host for i in items]
    assert peak[0] == 3, "the pool must fill up to, and never beyond, max_workers"
    assert results[3].exit_code == 3 and "no answer" in results[3].error
    assert all(r.changed for r in results if r.host != "h3"), "one failing host never stops the rest"


def test_for_each_host_really_overlaps_hosts():
    """Three hosts that each wait for the other two finish only if they run side by side."""
    barrier = threading.Barrier(3, timeout=10)
    results = for_each_host([Item(f"h{i}") for i in range(3)], HostResult.start, lambda item, result: barrier.wait(),
                            max_workers=3)
    assert all(r.exit_code == 0 for r in results)


# ---------------------------------------------------------------- the real bed: dead hosts


@pytest.fixture(scope="module")
def dead_address(testbed):
    _require(None if shutil.which("nsenter") and shutil.which("iptables") and tb.have("ip")
             else "needs ip, nsenter and iptables for the host that drops packets")
    tag = "d" + hashlib.sha1(SUFFIX.encode()).hexdigest()[:5]
    bed, address = tb.start_dead_host(testbed.workdir / "dead", tag)
    yield address
    bed.stop()


DEAD1, DEAD2 = f"dead-1{SUFFIX}", f"dead-2{SUFFIX}"


@pytest.fixture
def fleet_laptop(laptop, dead_address):
    """Two aliases for the address that drops everything, known to devbox.toml (so --all
    lists them) and to the ssh config with a short ConnectTimeout."""
    blocks = "".join(f"Host {alias}\n    HostName {dead_address}\n    User {tb.OPS_USER}\n    IdentityFile {laptop.identity}\n"
                     f"    ConnectTimeout {DEAD_TIMEOUT}\n\n" for alias in (DEAD1, DEAD2))
    laptop.ssh_config.write_text(laptop.ssh_config.read_text() + blocks)
    toml = laptop.work / "devbox.toml"
    toml.write_text(toml.read_text() + "".join(f'\n[hosts."{alias}"]\n' for alias in (DEAD1, DEAD2, HOST1, HOST2)))
    laptop.dead_address = dead_address
    return laptop


def test_dead_hosts_time_out_side_by_side_while_the_live_ones_answer(fleet_laptop):
    """`status --all`: every host gets its row, in order; each dead one says it did not answer
    within its ConnectTimeout; the two dead ones wait at the same time, not one after the other."""
    start = time.monotonic()
    rows, done = fleet_laptop.devbox.json("status", "--all", "--parallel", "4", expect=3)
    elapsed = time.monotonic() - start
    by_host = {row["host"]: row for row in rows}
    assert {DEAD1, DEAD2, HOST1, HOST2} <= set(by_host)
    for alias in (DEAD1, DEAD2):
        assert by_host[alias]["exit_code"] == 3
        assert f"no answer from {fleet_laptop.dead_address}:22" in by_host[alias]["error"]
        assert f"within {DEAD_TIMEOUT} s" in by_host[alias]["error"]
    for alias in (HOST1, HOST2):
        assert by_host[alias]["exit_code"] == 0 and by_host[alias]["state"] == "absent", by_host[alias]
    assert "Traceback" not in done.stderr
    assert elapsed < 2 * DEAD_TIMEOUT, f"the two dead hosts waited one after the other ({elapsed:.1f} s)"


def test_up_over_live_and_dead_hosts_with_one_slot_each(fleet_laptop):
    """`up` with --parallel 2 and a dead host first: the live hosts still come up and are
    ready; the dead one is its own failed row; the exit code is the worst (3)."""
    rows, _ = fleet_laptop.devbox.json("up", DEAD1, HOST1, HOST2, "--parallel", "2", "--no-verify", expect=3)
    assert [r["host"] for r in rows] == [DEAD1, HOST1, HOST2]
    assert rows[0]["exit_code"] == 3 and f"within {DEAD_TIMEOUT} s" in rows[0]["error"]
    assert all(r["exit_code"] == 0 and r["changed"] for r in rows[1:]), rows
    again, _ = fleet_laptop.devbox.json("up", HOST1, HOST2, "--parallel", "2")
    assert [r["changed"] for r in again] == [False, False]


@pytest.mark.parametrize("value", ["0", "-3", "many", "100000"])
def test_parallel_out_of_range_is_one_line_and_exit_2(laptop, value):
    done = laptop.devbox("status", HOST1, "--parallel", value)
    assert done.returncode == 2 and "--parallel" in done.stderr and "Traceback" not in done.stderr
