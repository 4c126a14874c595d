"""verify's checks as plain functions over a runner: here, this machine's own shell.

The same checks run over the box's SSH session in `devbox verify`; running them locally
proves they judge what they read (this test machine runs as root, which must fail).
"""
from __future__ import annotations

import os

from devbox.verify import FAIL, OK, SKIPPED, BoxProbe, Expectations, LocalRunner, box_checks, gpu_checks, mount_check, worst

LOCAL = LocalRunner().run


def test_the_probe_is_parsed_once_into_named_fields():
    probe = BoxProbe.parse("uid=1000 gid=1000 user=dev\nCapEff:\t0000000000000000\nNoNewPrivs:\t1\nroot_procs=0\nsudo=absent\n")
    assert (probe.uid, probe.gid, probe.user, probe.no_new_privs, probe.root_procs, probe.sudo) == ("1000", "1000", "dev", "1", "0", "absent")
    assert not probe.has_capabilities
    assert BoxProbe.parse("CapEff:\t00000000a80425fb").has_capabilities
    assert BoxProbe.parse("").has_capabilities, "an unreadable probe never passes"


def test_the_checks_run_over_a_local_shell_and_judge_what_they_see(tmp_path):
    me = os.getuid()
    checks = {c.name: c for c in box_checks(LOCAL, Expectations("dev", 1000, 1000, ((str(tmp_path), False),), gpus=0))}
    assert checks["uid/gid"].status == FAIL and f"{me}:" in checks["uid/gid"].detail
    assert checks["no root process"].status == FAIL          # this machine runs root processes
    assert checks[f"mount {tmp_path} writable"].status == OK
    assert checks["tmux"].status == OK and checks["tmux"].detail.startswith("tmux ")
    assert checks["nvidia-smi"].status == SKIPPED
    assert worst(list(checks.values())) == 1


def test_a_read_only_mount_that_takes_writes_fails(tmp_path):
    assert mount_check(LOCAL, str(tmp_path), read_only=True).status == FAIL
    assert mount_check(LOCAL, "/proc/1", read_only=True).status == OK


def test_gpu_checks_fail_not_skip_when_gpus_are_asked_and_none_answer():
    checks = gpu_checks(lambda *a, **k: (127, "", "nvidia-smi: not found"), wanted=None)
    assert [c.status for c in checks] == [FAIL] * 5 and "not found" in checks[0].detail


def test_runtime_checks_read_this_machine_real_memlock_and_shm():
    """This machine's own limits, judged against what the box was given (from its inspect)."""
    from devbox.verify import runtime_checks

    memlock = os.popen("sh -c 'ulimit -l'").read().strip()
    shm_kib = os.statvfs("/dev/shm").f_blocks * os.statvfs("/dev/shm").f_frsize // 1024
    given = {c.name: c for c in runtime_checks(LOCAL, Expectations("dev", 1, 1, memlock=memlock, shm_kib=shm_kib))}
    assert given["memlock (ulimit -l)"].status == OK and given["/dev/shm size"].status == OK
    other = {c.name: c for c in runtime_checks(LOCAL, Expectations("dev", 1, 1, memlock="1", shm_kib=shm_kib + 4))}
    assert other["memlock (ulimit -l)"].status == FAIL and other["/dev/shm size"].status == FAIL
    assert f"{memlock} (want 1)" == other["memlock (ulimit -l)"].detail


def test_runtime_expectations_come_from_the_box_inspect():
    from devbox.commands.verify import expectations
    from devbox.config import BoxSpec

    box = {"HostConfig": {"Ulimits": [{"Name": "memlock", "Hard": 8388608, "Soft": 8388608}], "ShmSize": 2 << 30}}
    expect = expectations(BoxSpec("h", gpus="none"), box)
    assert (expect.memlock, expect.shm_kib) == ("8192", 2 << 20)
    unlimited = expectations(BoxSpec("h"), {"HostConfig": {"Ulimits": [{"Name": "memlock", "Hard": -1, "Soft": -1}]}})
    assert unlimited.memlock is None and unlimited.shm_kib is None
