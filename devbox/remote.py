"""Host: one SSH session to a GPU host, thin over fabric.Connection.

Fabric resolves HostName/User/Port/IdentityFile/ProxyJump from the ssh config; we
add what it lacks: Include-following config, and host keys checked against the
user's known_hosts on every hop (Fabric's default AutoAddPolicy trusts anything).
Commands run over the one transport, so a whole `up` costs one TCP handshake.
"""
from __future__ import annotations

import io
import shlex
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Sequence

from devbox.errors import DevboxError, HostKeyMismatch, HostUnreachable, RemoteCommandFailed

DEFAULT_CONNECT_TIMEOUT = 10


@dataclass
class Result:
    command: str
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class _RejectUnknownHost:
    """Missing host key policy: refuse, and tell the user how to pin it themselves."""

    def missing_host_key(self, client, hostname, key):
        raise HostUnreachable(
            f"host key of {hostname} is not in your known_hosts",
            f"connect once with `ssh {hostname}` and check the fingerprint, then retry",
        )


def _known_hosts_files(lookup: dict) -> list[Path]:
    files = lookup.get("userknownhostsfile", "~/.ssh/known_hosts ~/.ssh/known_hosts2").split()
    return [Path(f).expanduser() for f in files]


def _make_connection(alias: str, ssh_config, connect_timeout: int):
    """A fabric Connection for `alias`, each ProxyJump hop built the same strict way."""
    from fabric import Config, Connection

    lookup = ssh_config.lookup(alias)
    gateway = False
    if "proxyjump" in lookup and lookup["proxyjump"].lower() != "none":
        hops = lookup["proxyjump"].split(",")
        gateway = _make_connection(hops[-1].strip(), ssh_config, connect_timeout)
    config = Config(ssh_config=ssh_config, overrides={"load_ssh_configs": False})
    conn = Connection(alias, config=config, gateway=gateway, connect_timeout=connect_timeout)
    conn.client.set_missing_host_key_policy(_RejectUnknownHost())
    for path in _known_hosts_files(lookup):
        if path.is_file():
            conn.client.load_host_keys(str(path))
    if "hostkeyalias" in lookup:
        _alias_host_keys(conn, lookup)
    return conn


def _alias_host_keys(conn, lookup: dict) -> None:
    """Honour HostKeyAlias (paramiko does not): look the key up under the alias."""
    keys = conn.client.get_host_keys()
    port = int(lookup.get("port", 22))
    name = lookup["hostname"] if port == 22 else f"[{lookup['hostname']}]:{port}"
    entry = keys.lookup(lookup["hostkeyalias"])
    if entry:
        for key_type, key in entry.items():
            keys.add(name, key_type, key)


class Host:
    """An SSH connection to one host, opened lazily, commands as argv lists."""

    def __init__(self, alias: str, ssh_config=None, connect_timeout: int = DEFAULT_CONNECT_TIMEOUT):
        from devbox.sshconfig import load_user_config

        self.alias = alias
        self.ssh_config = ssh_config if ssh_config is not None else load_user_config()
        self.connect_timeout = connect_timeout
        self._conn = None
        self._lock = threading.Lock()

    # -- connection ----------------------------------------------------------------
    @property
    def connection(self):
        with self._lock:
            if self._conn is None:
                self._conn = self._open()
            return self._conn

    def _open(self):
        import paramiko

        conn = _make_connection(self.alias, self.ssh_config, self.connect_timeout)
        try:
            conn.open()
        except paramiko.BadHostKeyException as exc:
            raise HostKeyMismatch(
                f"{self.alias}: host key does not match known_hosts",
                "someone may be intercepting; if the host was re-installed, fix known_hosts by hand",
            ) from exc
        except paramiko.AuthenticationException as exc:
            raise HostUnreachable(f"{self.alias}: SSH login refused ({exc})", "check User and IdentityFile in ~/.ssh/config, or ssh-add your key") from exc
        except DevboxError:
            raise
        except (OSError, socket.error, paramiko.SSHException, EOFError) as exc:
            raise HostUnreachable(
                f"{self.alias}: cannot connect over SSH ({exc.__class__.__name__}: {exc})",
                f"check `ssh {self.alias}` works from this machine",
            ) from exc
        return conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                gateway = self._conn.gateway
                while gateway:
                    gateway.close()
                    gateway = gateway.gateway
                self._conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- commands -----------------------------------------------------------------
    def run(
        self,
        argv: Sequence[str] | str,
        *,
        stdin: bytes | BinaryIO | None = None,
        check: bool = True,
        timeout: float | None = 600,
        on_stdout: Callable[[bytes], None] | None = None,
        on_stdin: Callable[[int], None] | None = None,
        keep_stdin_open: bool = False,
    ) -> Result:
        """Run a command (argv is quoted with shlex.join) and collect its output."""
        command = argv if isinstance(argv, str) else shlex.join(argv)
        transport = self.connection.transport
        try:
            channel = transport.open_session(timeout=self.connect_timeout)
        except Exception as exc:
            raise HostUnreachable(f"{self.alias}: SSH session failed ({exc})", f"check `ssh {self.alias}`") from exc
        result = _exchange(channel, command, stdin, timeout, on_stdout, on_stdin, keep_stdin_open)
        if check and not result.ok:
            raise RemoteCommandFailed(
                f"{self.alias}: `{_short(command)}` exited {result.exit_code}: {_reason(result)}",
                "see the message above; re-run with the same command after fixing it",
            )
        return result

    def docker(self, *args: str, stdin: bytes | None = None, check: bool = True, **kw) -> Result:
        return self.run(["docker", *args], stdin=stdin, check=check, **kw)

    def open_tunnel(self, port: int, address: str = "127.0.0.1"):
        """A direct-tcpip channel to address:port on the host (what ProxyJump does)."""
        transport = self.connection.transport
        try:
            return transport.open_channel("direct-tcpip", (address, port), ("127.0.0.1", 0), timeout=self.connect_timeout)
        except Exception as exc:
            raise HostUnreachable(
                f"{self.alias}: cannot open a tunnel to {address}:{port} ({exc})",
                "check the host's sshd allows TCP forwarding (AllowTcpForwarding) and the box is running",
            ) from exc


def _reason(result: Result) -> str:
    """The line that explains a failure: an error line if there is one, else the last."""
    lines = [l.strip() for l in (result.stderr or result.stdout).splitlines() if l.strip()]
    errors = [l for l in lines if "error" in l.lower()]
    return (errors or lines or [""])[0][:300]


def _short(command: str, limit: int = 80) -> str:
    return command if len(command) <= limit else command[: limit - 1] + "…"


def _exchange(channel, command: str, stdin, timeout, on_stdout, on_stdin=None, keep_stdin_open=False) -> Result:
    """Send stdin, read stdout/stderr until exit; bounded by `timeout` seconds.

    A link that drops mid-command is a HostUnreachable (one line, per host), never a traceback.
    """
    import paramiko

    try:
        return _exchange_on(channel, command, stdin, timeout, on_stdout, on_stdin, keep_stdin_open)
    except (OSError, EOFError, paramiko.SSHException) as exc:
        channel.close()
        raise HostUnreachable(f"SSH connection lost during `{_short(command)}` ({exc.__class__.__name__}: {exc})",
                              "check the link and re-run: every devbox step is safe to repeat") from exc


def _exchange_on(channel, command: str, stdin, timeout, on_stdout, on_stdin, keep_stdin_open) -> Result:
    deadline = None if timeout is None else time.monotonic() + timeout
    channel.exec_command(command)
    if stdin is not None:
        _send_all(channel, stdin, on_stdin)
    if not keep_stdin_open:  # open: the remote side learns we left when the channel closes
        channel.shutdown_write()
    out, err = bytearray(), bytearray()
    channel.settimeout(0.2)
    while True:
        # Read the end state before draining: data precedes EOF on the wire, so once EOF
        # is seen here, the drain below collects everything. sshd may send exit-status
        # before the last output (OpenSSH does when a child still holds the pipe): done
        # only at EOF.
        finished = channel.exit_status_ready() and (channel.eof_received or channel.closed)
        lost = channel.closed and not channel.eof_received and not channel.get_transport().is_active()
        progressed = False
        while channel.recv_ready():
            data = channel.recv(65536)
            out += data
            progressed = True
            if on_stdout:
                on_stdout(data)
        while channel.recv_stderr_ready():
            err += channel.recv_stderr(65536)
            progressed = True
        if lost:
            raise EOFError("the SSH transport closed before the command ended")
        if finished:
            break
        if deadline is not None and time.monotonic() > deadline:
            channel.close()
            raise RemoteCommandFailed(f"`{_short(command)}` timed out after {timeout:.0f} s", "retry, or check the host is not overloaded")
        if not progressed:  # status_event stays set once the status came: then sleep
            time.sleep(0.01) if channel.exit_status_ready() else channel.status_event.wait(0.05)
    code = channel.recv_exit_status()
    channel.close()
    return Result(command, code, out.decode(errors="replace"), err.decode(errors="replace"))


def _send_all(channel, data, on_sent=None, chunk: int = 1 << 16) -> None:
    """Send bytes or a binary file in chunks, reporting the running total."""
    source = data if hasattr(data, "read") else io.BytesIO(data)
    sent = 0
    while block := source.read(chunk):
        channel.sendall(block)
        sent += len(block)
        if on_sent:
            on_sent(sent)
