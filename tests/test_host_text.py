"""Silent acceptance and terminal escapes (issue 23.7): a shm_size no host memory can back is
refused before anything is made, and nothing a host prints reaches the terminal as a control
sequence (an nvidia-smi printing `\\033]0;PWNED\\007`, on the real bed)."""
from __future__ import annotations

import pytest

from devbox.config import BoxSpec
from devbox.errors import ConfigError, DevboxError
from devbox.facts import Facts
from devbox.plan import plan_up

HOSTILE = "\033]0;PWNED\007\033[31m\r\x9bNVIDIA-SMI has failed\033[2J"


def test_a_shm_size_or_memory_above_the_host_memory_is_refused_in_planning():
    facts = Facts(docker_version="27.0", docker_root_free_kib=50 << 20, host_checked=True, host_memory=24 << 30)
    for key in ("shm_size", "memory"):
        with pytest.raises(ConfigError) as refused:
            plan_up(BoxSpec("h", gpus="none", **{key: "100000g"}), facts, "devbox-ssh:abc", "# k\n", "k")
        assert f'{key} = "100000g" is more than the host\'s memory (24 GiB)' in refused.value.one_line()
        assert "at most 24g" in refused.value.one_line()
    assert plan_up(BoxSpec("h", gpus="none", shm_size="16g"), facts, "devbox-ssh:abc", "# k\n", "k").steps


def test_up_refuses_a_shm_size_above_the_host_memory_and_makes_nothing(laptop):
    (laptop.work / "devbox.toml").write_text(
        f'[defaults]\nplaybook = "cpu"\nbase_image = "local/debian:bookworm"\nshm_size = "100000g"\n')
    done = laptop.devbox("up", laptop.host1)
    assert done.returncode == 2, done.stdout + done.stderr
    assert 'shm_size = "100000g" is more than the host\'s memory' in done.stdout
    assert laptop.devbox.json("status", laptop.host1, expect=0)[0][0]["state"] == "absent"


def test_printable_removes_every_control_sequence_but_keeps_tabs_and_newlines():
    from devbox.result import printable

    assert printable(HOSTILE + "\tok\n") == "NVIDIA-SMI has failed\tok\n"
    assert printable("\033P1;2qpayload\033\\after\x07\x00") == "after"


@pytest.fixture
def hostile_driver(laptop, testbed):
    override = testbed.workdir / laptop.noruntime / "nvidia-smi-override"
    override.write_text(f"#!/bin/sh\nprintf '%s\\n' '{HOSTILE}'\nexit 9\n")
    override.chmod(0o755)
    (laptop.work / "devbox.toml").write_text(f'[hosts.{laptop.noruntime}]\ngpus = "all"\nbase_image = "local/debian:bookworm"\n')
    yield
    override.unlink()


def test_host_text_in_top_status_and_up_reaches_the_terminal_without_escapes(laptop, hostile_driver):
    for args in (["top", laptop.noruntime, "--once"], ["up", laptop.noruntime, "--dry-run"],
                 ["top", laptop.noruntime, laptop.host1, "--once"]):
        done = laptop.devbox(*args)
        assert done.returncode == 3 and "NVIDIA-SMI has failed" in done.stdout + done.stderr, (args, done.stdout, done.stderr)
        for stream in (done.stdout, done.stderr):
            assert not set(stream) & ({chr(c) for c in range(32)} - {"\n", "\t"} | {"\x7f", "\x9b"}), (args, repr(stream))
    rows, _ = laptop.devbox.json("top", laptop.noruntime, "--once", expect=3)
    assert "\x1b[2J" in rows[0]["error"], "JSON keeps the text as said (json escapes it)"


def test_the_cli_error_printer_strips_control_sequences(monkeypatch, capsys):
    from devbox import cli

    def hostile():
        raise DevboxError(f"h: `nvidia-smi` said {HOSTILE}", "check the driver")

    monkeypatch.setattr(cli, "app", hostile)
    with pytest.raises(SystemExit) as ended:
        cli.main()
    err = capsys.readouterr().err
    assert ended.value.code == 1 and "\x1b" not in err and "\x07" not in err and "NVIDIA-SMI has failed" in err
