"""devbox.remote against a real sshd: what a command prints is never cut short."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from devbox.remote import Host


def test_output_written_after_the_command_exits_is_still_read(laptop):
    """sshd sends exit-status when the shell exits, maybe before the last output (a child
    still holds the pipe): reading must go on to EOF, or a verify probe loses its tail."""
    with Host(laptop.host1) as host:
        # Ten times: the last line and EOF arrive together, a race a single run can miss.
        results = [host.run("echo first; (sleep 0.3; echo last) & exit 0") for _ in range(10)]
    assert [r.exit_code for r in results] == [0] * 10
    assert [r.stdout.split() for r in results] == [["first", "last"]] * 10


def test_a_large_output_arrives_whole(laptop):
    with Host(laptop.host1) as host:
        result = host.run("head -c 3000000 /dev/zero | tr '\\0' x; echo; echo end")
    assert len(result.stdout) == 3_000_000 + len("\nend\n") and result.stdout.endswith("x\nend\n")


def test_a_link_that_drops_mid_command_is_one_line_not_a_hang(laptop):
    from devbox.errors import HostUnreachable

    with Host(laptop.host1) as host:
        host.run("true")
        threading.Timer(0.5, host.connection.transport.sock.close).start()
        started = time.monotonic()
        with pytest.raises(HostUnreachable) as lost:
            host.run("sleep 30", timeout=60)
    assert time.monotonic() - started < 15
    assert "connection lost during `sleep 30`" in lost.value.one_line() and "\n" not in lost.value.one_line()


def test_a_stale_known_hosts_line_next_to_the_right_one_still_connects(laptop, testbed):
    """After a host re-install, OpenSSH accepts when any line holds the key; devbox too."""
    from devbox.errors import HostKeyMismatch
    from devbox.testbed import keygen

    host = testbed.hosts[laptop.host1]
    stale = Path(str(keygen(laptop.home / "stale_key", "old-install")) + ".pub").read_text().split()
    known = laptop.home / ".ssh" / "known_hosts"
    right = host.host_key_line()
    known.write_text(f"[{host.address}]:{host.port} {stale[0]} {stale[1]}\n" + known.read_text())
    with Host(laptop.host1) as connected:
        assert connected.run("echo in").stdout == "in\n"
    assert laptop.ssh(laptop.host1, "true").returncode == 0  # OpenSSH agrees

    known.write_text(known.read_text() + f"@revoked * {right.split(' ', 1)[1]}\n")
    with pytest.raises(HostKeyMismatch, match="revoked"), Host(laptop.host1) as refused:
        refused.run("true")
