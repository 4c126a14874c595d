"""devbox.remote against a real sshd: what a command prints is never cut short."""
from __future__ import annotations

from devbox.remote import Host


def test_output_written_after_the_command_exits_is_still_read(laptop):
    """sshd sends exit-status when the shell exits, maybe before the last output (a child
    still holds the pipe): reading must go on to EOF, or a verify probe loses its tail."""
    with Host(laptop.host1) as host:
        result = host.run("echo first; (sleep 0.5; echo last) & exit 0")
    assert result.exit_code == 0
    assert result.stdout.split() == ["first", "last"]


def test_a_large_output_arrives_whole(laptop):
    with Host(laptop.host1) as host:
        result = host.run("head -c 3000000 /dev/zero | tr '\\0' x; echo; echo end")
    assert len(result.stdout) == 3_000_000 + len("\nend\n") and result.stdout.endswith("x\nend\n")
