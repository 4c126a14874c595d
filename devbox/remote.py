"""Host: one SSH session to a GPU host, thin over fabric.Connection.

Fabric resolves HostName/User/Port/IdentityFile from the ssh config; we add what it
lacks or gets wrong: Include-following config, routes read as OpenSSH reads them
(ProxyJump chains hop by hop, ProxyCommand with OpenSSH's tokens and shell, the first
of the two obtained wins), and host keys checked as OpenSSH checks them on every hop
(Fabric's gateways trust any key). Commands run over the one transport, so a whole
`up` costs one handshake per hop.
"""
from __future__ import annotations

import collections
import functools
import io
import os
import re
import select
import shlex
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Sequence

from devbox import known_hosts
from devbox.errors import CommandStalled, CommandTimedOut, ConfigError, DevboxError, HostUnreachable, RemoteCommandFailed
from devbox.sshconfig import expand_tokens

DEFAULT_CONNECT_TIMEOUT = 10   # seconds; a Host block's ConnectTimeout overrides it, as for OpenSSH
# A read-only question (facts, top) answers in well under a second on a healthy host; one
# that hangs (a wedged nvidia-smi or dockerd) must not hold the command for run()'s 600 s.
DEFAULT_QUESTION_TIMEOUT = 30
TIMEOUT_EXITS = (124, 137)     # coreutils `timeout`: TERM sent (124), or KILL after -k (137)
STREAMED_TAIL = 64 << 10       # bytes of a streamed stdout kept for the error message
# The question ($2) in its own process group under `timeout` ($1 s; it signals the whole group).
# A background job's stdin is /dev/null in sh, so the watcher gets ours as fd 3: it reaches EOF
# when devbox goes, and stops the question then. The watcher holds no output pipe, so the
# channel ends as soon as the question does.
ASK_WRAPPER = ('timeout -k 2 "$1" sh -c "$2" </dev/null & q=$!; exec 3<&0; '
               '( cat <&3; kill -TERM "$q" ) >/dev/null 2>&1 </dev/null & w=$!; '
               'wait "$q"; s=$?; kill "$w" 2>/dev/null; exit "$s"')


@dataclass
class Result:
    command: str
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass(frozen=True)
class Hop:
    """One `[user@]host[:port]` of a ProxyJump list (user and port override the host's config)."""

    host: str
    user: str | None = None
    port: int | None = None


@dataclass(frozen=True)
class Route:
    """How OpenSSH reaches a host: directly, through ProxyJump hops, or a ProxyCommand."""

    jump: tuple[Hop, ...] = ()
    command: str | None = None


HOP_RE = re.compile(r"(?:(?P<user>.+)@)?(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:@\[\]]+))(?::(?P<port>\d+))?")


def parse_jump(value: str) -> tuple[Hop, ...]:
    """`a,ops@b:2222,ssh://c`: the hops in order, laptop first, as OpenSSH's parse_jump reads them."""
    hops = []
    for word in (w.strip() for w in value.split(",")):
        word = word[len("ssh://"):].rstrip("/") if word.lower().startswith("ssh://") else word
        match = HOP_RE.fullmatch(word)
        if not match:
            raise ConfigError(f"ssh config: cannot read ProxyJump hop {word!r} in {value!r}", "write hops as [user@]host[:port], comma-separated")
        port = match.group("port")
        hops.append(Hop(match.group("v6") or match.group("host"), match.group("user"), int(port) if port else None))
    return tuple(hops)


def route_of(alias: str, lookup: dict, user: str | None = None, port: int | None = None) -> Route:
    """Of ProxyJump and ProxyCommand the first obtained wins, `none` included (it disables
    the other too), as in OpenSSH's readconf.c; paramiko's lookup keeps both, in the order
    they were obtained, so the dict's order decides."""
    for key, value in lookup.items():
        if key == "proxycommand":
            return Route(command=expand_tokens(value, key, alias, lookup, user, port)) if value else Route()
        if key == "proxyjump":
            return Route() if value.lower() == "none" else Route(jump=parse_jump(expand_tokens(value, key, alias, lookup, user, port)))
    return Route()


def known_hosts_files(alias: str, lookup: dict) -> list[Path]:
    """UserKnownHostsFile (several allowed, `none` for none), then GlobalKnownHostsFile."""
    files = []
    for key, default in (("userknownhostsfile", known_hosts.DEFAULT_USER_FILES), ("globalknownhostsfile", known_hosts.DEFAULT_GLOBAL_FILES)):
        words = lookup.get(key, default).split()
        files += [Path(expand_tokens(w, "userknownhostsfile", alias, lookup)).expanduser() for w in words if w.lower() != "none"]
    return files


class _VerifyHostKey:
    """Strict host keys on every hop, checked as OpenSSH does (devbox.known_hosts).

    Fabric builds gateway hops with AutoAddPolicy (any key trusted); paramiko's HostKeys
    keeps one key per type per host (a stale line next to the right one refuses). So we
    load no keys into paramiko, which then asks this policy about every host it meets.
    """

    def __init__(self, alias: str, name: str, lines: list):
        self.alias, self.name, self.lines = alias, name, lines

    def missing_host_key(self, client, hostname, key):
        known_hosts.verify(self.alias, self.name, key.asbytes(), self.lines)


def _transport_factory(key_types: list[str]):
    """Offer the host key types known for the host first, as OpenSSH does, so a host that
    has several keys shows the one known_hosts can vouch for.

    A TCP socket gets TCP_NODELAY before the first byte: key exchange and login are
    small request/reply packets, and Nagle held each behind the peer's delayed ACK
    (connect + login measured 65 ms without, 30 ms with, on loopback)."""
    import paramiko

    wanted = [t for k in key_types for t in (["rsa-sha2-512", "rsa-sha2-256", k] if k == "ssh-rsa" else [k])]

    def make(sock, **kwargs):
        if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport = paramiko.Transport(sock, **kwargs)
        options = transport.get_security_options()
        first = [t for t in wanted if t in options.key_types]
        options.key_types = first + [t for t in options.key_types if t not in first]
        return transport

    return make


class _ProxyCommand:
    """A ProxyCommand run as OpenSSH runs it (`$SHELL -c "exec CMD"`), as a socket for
    paramiko. paramiko's own splits without a shell, spins until its timeout when the
    command exits, and drops its stderr: we see EOF and keep the stderr tail for the error."""

    def __init__(self, command: str):
        self.command = command
        shell = os.environ.get("SHELL") or "/bin/sh"
        self.process = subprocess.Popen([shell, "-c", f"exec {command}"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
        self.timeout = None
        self._stderr = collections.deque(maxlen=10)
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()

    def _read_stderr(self) -> None:
        for line in self.process.stderr:
            self._stderr.append(line.decode(errors="replace").strip())

    def stderr_tail(self) -> str:
        self._reader.join(timeout=1)  # a failing command says why as it exits: read to its end
        return " / ".join(l for l in self._stderr if l)[-300:]

    def send(self, data: bytes) -> int:
        try:
            return os.write(self.process.stdin.fileno(), data)
        except OSError as exc:
            raise EOFError(f"ProxyCommand exited ({exc.strerror})") from exc

    def recv(self, size: int) -> bytes:
        try:
            ready, _, _ = select.select([self.process.stdout], [], [], self.timeout)
            if not ready:
                raise socket.timeout()
            return os.read(self.process.stdout.fileno(), size)  # b"" at EOF: paramiko sees a closed link
        except ValueError:   # closed by close() while paramiko's thread still reads: the link is gone
            return b""

    def settimeout(self, timeout) -> None:
        self.timeout = timeout

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        for pipe in (self.process.stdin, self.process.stdout):
            pipe.close()

    @property
    def closed(self) -> bool:
        return self.process.poll() is not None

    _closed = closed


@functools.cache
def _connection_class():
    from fabric import Connection

    class _Connection(Connection):
        """Fabric's, with a ProxyCommand string taken as already expanded: Fabric re-parses it
        under a dummy Host with no Port or User, so its %p is always 22 and %r the local user."""

        proxy = None

        def open_gateway(self):
            if isinstance(self.gateway, str):
                self.proxy = _ProxyCommand(self.gateway)
                return self.proxy
            return super().open_gateway()

    return _Connection


def _make_connection(alias: str, ssh_config, connect_timeout: int, hop: Hop | None = None, via=None, seen: tuple = ()):
    """A fabric Connection for `alias`, each hop built the same strict way.

    `via`: the previous hop of a ProxyJump chain. As OpenSSH does for `-J a,b`, only the
    first hop follows its own config's route; b is reached through a, whatever b's own
    ProxyJump or ProxyCommand say.
    """
    from fabric import Config

    if alias in seen:
        raise ConfigError(f"ssh config: ProxyJump loop {' -> '.join((*seen, alias))}",
                          f"give Host {alias} its own route, or `ProxyJump none` before any `Host *` ProxyJump")
    lookup = ssh_config.lookup(alias)
    user, port = (hop.user, hop.port) if hop else (None, None)
    gateway = via if via is not None else False
    if via is None:
        route = route_of(alias, lookup, user, port)
        gateway, previous = route.command or False, None
        for step in route.jump:
            previous = gateway = _make_connection(step.host, ssh_config, connect_timeout, step, previous, (*seen, alias))
    name = known_hosts.host_name(lookup["hostname"], int(port or lookup.get("port", 22)), lookup.get("hostkeyalias"))
    lines = known_hosts.read(known_hosts_files(alias, lookup))
    config = Config(ssh_config=ssh_config, overrides={"load_ssh_configs": False})
    conn = _connection_class()(alias, user=user, port=port, config=config, gateway=gateway, connect_timeout=connect_timeout,
                               connect_kwargs={"transport_factory": _transport_factory(known_hosts.key_types(lines, name))})
    conn.client.set_missing_host_key_policy(_VerifyHostKey(alias, name, lines))
    return conn


def _chain(conn) -> list:
    """The connection and its gateway hops, target first."""
    from fabric import Connection

    hops = [conn]
    while isinstance(hops[-1].gateway, Connection):
        hops.append(hops[-1].gateway)
    return hops


class Host:
    """An SSH connection to one host, opened lazily, commands as argv lists."""

    def __init__(self, alias: str, ssh_config=None, connect_timeout: int | None = None):
        from devbox.sshconfig import load_user_config

        self.alias = alias
        self.ssh_config = ssh_config if ssh_config is not None else load_user_config()
        self.connect_timeout = connect_timeout or _connect_timeout(self.ssh_config.lookup(alias))
        self._conn = None
        self._master: OpenSshMaster | None = None
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
        except DevboxError:
            self._close_chain(conn)
            raise
        except paramiko.AuthenticationException as exc:
            self._close_chain(conn)
            raise HostUnreachable(f"{self.alias}: SSH login refused ({exc})", "check User and IdentityFile in ~/.ssh/config, or ssh-add your key") from exc
        except (OSError, paramiko.SSHException, EOFError) as exc:
            error = self._connect_error(conn, exc)
            self._close_chain(conn)
            raise error from exc
        return conn

    def _connect_error(self, conn, exc: Exception) -> DevboxError:
        """Name what failed: an alias the config does not know, a ProxyCommand (with its
        stderr), or the link; the first hop is the only one whose name we resolve here."""
        first = _chain(conn)[-1]
        if isinstance(exc, socket.gaierror) and not isinstance(first.gateway, str):
            if first.original_host not in self.ssh_config.get_hostnames():
                return ConfigError(f"{first.original_host} is not a Host in your ~/.ssh/config",
                                   f"add a Host {first.original_host} block")
            return HostUnreachable(f"{first.original_host}: cannot resolve HostName {first.host} ({exc.strerror})",
                                   "check HostName in ~/.ssh/config and your DNS")
        proxies = [c.proxy for c in _chain(conn) if c.proxy is not None]
        if proxies:
            said = proxies[0].stderr_tail()
            return HostUnreachable(
                f"{self.alias}: cannot connect through ProxyCommand `{_short(proxies[0].command)}`"
                + (f": {said}" if said else f" ({exc.__class__.__name__}: {exc})"),
                f"check `ssh {self.alias}` works from this machine")
        if isinstance(exc, (socket.timeout, TimeoutError)):
            return HostUnreachable(f"{self.alias}: no answer from {first.host}:{first.port} within {self.connect_timeout} s (connect timeout)",
                                   f"check the host is up and reachable (`ssh {self.alias}`), or set ConnectTimeout in its Host block")
        return HostUnreachable(f"{self.alias}: cannot connect over SSH ({exc.__class__.__name__}: {exc})",
                               f"check `ssh {self.alias}` works from this machine")

    @staticmethod
    def _close_chain(conn) -> None:
        for hop in _chain(conn):
            hop.close()
            if hop.proxy is not None:
                hop.proxy.close()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._close_chain(self._conn)
                self._conn = None
            if self._master is not None:
                self._master.close()
                self._master = None

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
        idle_timeout: float | None = None,
    ) -> Result:
        """Run a command (argv is quoted with shlex.join) and collect its output.
        `idle_timeout`: raise CommandStalled once it prints nothing for that long."""
        # Our own channel loop, not Connection.run: invoke's runner feeds a non-terminal
        # in_stream about a byte per loop with a 10 ms input_sleep. Measured side by side
        # (bench/stream_read.py, 2026-11-23): 4 KiB took Connection.run 44 s (0.09 KiB/s)
        # and this loop 0.17 s; a `docker load` of GBs needs 64 KiB sends.
        command = argv if isinstance(argv, str) else shlex.join(argv)
        transport = self.connection.transport
        try:
            channel = transport.open_session(timeout=self.connect_timeout)
        except Exception as exc:
            if not transport.is_active():
                raise stopped_answering(self.alias, exc) from exc
            raise HostUnreachable(f"{self.alias}: SSH session failed ({exc})", f"check `ssh {self.alias}`") from exc
        result = _exchange(channel, command, stdin, timeout, on_stdout, on_stdin, keep_stdin_open, idle_timeout, self.alias)
        if check and not result.ok:
            raise RemoteCommandFailed(
                f"{self.alias}: `{_short(command)}` exited {result.exit_code}: {why_failed(result)}",
                "see the message above; re-run with the same command after fixing it",
            )
        return result

    def ask(self, script: str, timeout: float | None = None) -> Result:
        """Run a read-only question script under the host's own `timeout`, which ends its whole
        process group: nothing it started outlives it, and a watcher on our open stdin ends it
        at once when devbox goes (Ctrl-C, closed connection). A question that does not answer
        in time is a CommandTimedOut carrying what it printed so far."""
        limit = timeout or question_timeout()
        wrapped = shlex.join(["sh", "-c", ASK_WRAPPER, "sh", f"{limit:g}", script])
        # our own deadline a little later: the host's timeout ends the script first, and we
        # read what it printed; ours is for a host too wedged to run even that
        result = self.run(wrapped, check=False, timeout=limit + 5, keep_stdin_open=True)
        if result.exit_code in TIMEOUT_EXITS:
            raise CommandTimedOut(f"{self.alias}: a host question did not answer within {limit:g} s", "", result.stdout, limit)
        return result

    def docker(self, *args: str, stdin: bytes | None = None, check: bool = True, **kw) -> Result:
        return self.run(["docker", *args], stdin=stdin, check=check, **kw)

    def stream(self, command: str, source: BinaryIO, on_sent: Callable[[int], None] | None = None) -> Result:
        """Send `source` (GBs: an image) into `command`'s stdin through the fastest transport
        here (`stream_transport()`): the OpenSSH client when installed, with the user's own
        config and known_hosts (217 MB/s against paramiko's 177 on loopback, issue 26's
        review), else this Host's paramiko session."""
        if stream_transport() == "paramiko":
            return self.run(command, stdin=source, timeout=None, on_stdin=on_sent, check=False)
        with self._lock:
            if self._master is None:
                self._master = OpenSshMaster(self.alias, self.connect_timeout)
        return self._master.run(command, source, on_sent)

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


STREAM_TRANSPORT_ENV = "DEVBOX_STREAM_TRANSPORT"   # "paramiko" forces it (benchmarks compare the two)


def stream_transport() -> str:
    """"openssh" when the `ssh` client is installed, else "paramiko"."""
    if os.environ.get(STREAM_TRANSPORT_ENV) == "paramiko" or not shutil.which("ssh"):
        return "paramiko"
    return "openssh"


def stream_transport_said() -> str:
    """Which transport streams, and why, in a progress line's words."""
    if stream_transport() == "openssh":
        return "the OpenSSH client"
    return "paramiko (no `ssh` client here)" if not shutil.which("ssh") else f"paramiko ({STREAM_TRANSPORT_ENV}=paramiko)"


class OpenSshMaster:
    """`ssh -F <the user's config> HOST COMMAND`, for bulk data: each command of one delivery
    (a `docker load` per committed part) rides one master connection of our own, in a private
    folder (ControlPersist is a safety net: it ends 60 s after devbox if devbox is killed).
    The user's config decides everything else (User, IdentityFile, ProxyJump, known_hosts)."""

    def __init__(self, alias: str, connect_timeout: int = DEFAULT_CONNECT_TIMEOUT):
        import tempfile

        from devbox.sshconfig import user_config_path

        self.alias = alias
        self.folder = tempfile.mkdtemp(prefix="devbox-ssh-")   # 0700: only we reach the socket
        config = user_config_path()
        self.base = ["ssh", "-F", str(config) if config.is_file() else os.devnull, "-T", "-a", "-x",
                     "-o", "BatchMode=yes", "-o", "ClearAllForwardings=yes", "-o", "RemoteCommand=none",
                     "-o", "LogLevel=ERROR", "-o", "ControlMaster=auto", "-o", f"ControlPath={self.folder}/m",
                     "-o", "ControlPersist=60", "-o", f"ConnectTimeout={connect_timeout}",
                     # a link that drops packets mid-stream ends in about a minute, not TCP's ~15
                     "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]

    def run(self, command: str, source: BinaryIO, on_sent: Callable[[int], None] | None = None) -> Result:
        import tempfile

        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            # Files, not pipes: the master ssh forks into the background holding them open.
            process = subprocess.Popen([*self.base, "--", self.alias, command], stdin=subprocess.PIPE, stdout=out, stderr=err)
            try:
                _write_all(process.stdin, source, on_sent)
            except BaseException:
                process.kill()
                process.wait()
                raise
            code = process.wait()
            out.seek(0)
            err.seek(0)
            stdout, said = out.read().decode(errors="replace"), err.read().decode(errors="replace")
        if code == 255:   # ssh's own failure (the link, the login), not the command's
            raise HostUnreachable(f"{self.alias}: the OpenSSH client failed ({said.strip()[-200:] or 'exit 255'})",
                                  f"check `ssh {self.alias}` works from this machine")
        return Result(command, code, stdout, said)

    def close(self) -> None:
        subprocess.run([*self.base, "-O", "exit", "--", self.alias], capture_output=True, timeout=10)
        shutil.rmtree(self.folder, ignore_errors=True)


def _write_all(pipe, source: BinaryIO, on_sent: Callable[[int], None] | None) -> None:
    """Copy source into a process's stdin; a process that ended early is told by its exit."""
    sent = 0
    try:
        while block := source.read(1 << 20):
            pipe.write(block)
            sent += len(block)
            if on_sent:
                on_sent(sent)
    except BrokenPipeError:
        pass
    finally:
        try:
            pipe.close()
        except BrokenPipeError:
            pass


def stopped_answering(name: str, exc: Exception, during: str = "") -> HostUnreachable:
    """The one message for an SSH connection that died mid-session (paramiko says "No existing
    session" or "SSH session not active", which name neither the host nor a remedy)."""
    return HostUnreachable(f"{name}: stopped answering mid-session{during}: the SSH connection is gone ({exc})",
                           f"check that {name} is up and reachable, then re-run: every devbox step is safe to repeat")


def question_timeout() -> float:
    """DEVBOX_QUESTION_TIMEOUT seconds (a slow fleet may need more), else the default."""
    value = os.environ.get("DEVBOX_QUESTION_TIMEOUT", "")
    try:
        seconds = float(value) if value else DEFAULT_QUESTION_TIMEOUT
    except ValueError:
        raise ConfigError(f"DEVBOX_QUESTION_TIMEOUT={value!r} is not a number of seconds", "set it to e.g. 60, or unset it") from None
    if not 0 < seconds <= 600:
        raise ConfigError(f"DEVBOX_QUESTION_TIMEOUT={value!r} is out of range", "set it between 1 and 600 seconds, or unset it")
    return seconds


def _connect_timeout(lookup: dict) -> int:
    """The host's ConnectTimeout (seconds, as OpenSSH reads it), else ours: a host that
    drops packets costs this long, in its own worker, while the others go on."""
    value = str(lookup.get("connecttimeout", "")).strip()
    return int(value) if value.isdigit() and int(value) > 0 else DEFAULT_CONNECT_TIMEOUT


def why_failed(result: Result) -> str:
    """The line that explains a failure: an error line if there is one, else the last."""
    lines = [l.strip() for l in (result.stderr or result.stdout).splitlines() if l.strip()]
    errors = [l for l in lines if "error" in l.lower()]
    return (errors or lines or [""])[0][:300]


def _short(command: str, limit: int = 80) -> str:
    return command if len(command) <= limit else command[: limit - 1] + "…"


def _exchange(channel, command: str, stdin, timeout, on_stdout, on_stdin=None, keep_stdin_open=False, idle_timeout=None,
              alias: str = "") -> Result:
    """Send stdin, read stdout/stderr until exit; bounded by `timeout` seconds.

    A link that drops mid-command is a HostUnreachable (one line, per host), never a traceback.
    """
    import paramiko

    try:
        return _exchange_on(channel, command, stdin, timeout, on_stdout, on_stdin, keep_stdin_open, idle_timeout)
    except (OSError, EOFError, paramiko.SSHException) as exc:
        close_channel(channel)
        raise stopped_answering(alias or "the host", exc, f" (SSH connection lost during `{_short(command)}`)") from exc


def close_channel(channel) -> None:
    """Close a channel whose link may be gone: paramiko then raises EOFError from close(),
    which would hide the error that says the link dropped."""
    import paramiko

    try:
        channel.close()
    except (EOFError, OSError, paramiko.SSHException):
        pass


def _exchange_on(channel, command: str, stdin, timeout, on_stdout, on_stdin, keep_stdin_open, idle_timeout=None) -> Result:
    deadline = None if timeout is None else time.monotonic() + timeout
    channel.exec_command(command)
    if stdin is not None:
        _send_all(channel, stdin, on_stdin)
    if not keep_stdin_open:  # open: the remote side learns we left when the channel closes
        channel.shutdown_write()
    # Streamed stdout (on_stdout) is handed on and only its tail kept: a `logs -f` of a
    # 1 GB log holds the SSH window (2 MiB) and this tail, not the log.
    out, err = _Buffer(STREAMED_TAIL if on_stdout else None), bytearray()
    channel.settimeout(0.2)
    heard = time.monotonic()
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
            close_channel(channel)
            raise CommandTimedOut(f"`{_short(command)}` timed out after {timeout:.0f} s", "retry, or check the host is not overloaded",
                                  bytes(out.data).decode(errors="replace"), timeout)
        heard = time.monotonic() if progressed else heard
        if idle_timeout is not None and time.monotonic() - heard > idle_timeout:
            close_channel(channel)
            raise CommandStalled(f"`{_short(command)}` printed nothing for {idle_timeout:g} s", "retry, or check what it waits for")
        if not progressed:  # status_event stays set once the status came: then sleep
            time.sleep(0.01) if channel.exit_status_ready() else channel.status_event.wait(0.05)
    code = channel.recv_exit_status()
    channel.close()
    return Result(command, code, bytes(out.data).decode(errors="replace"), err.decode(errors="replace"))


class _Buffer:
    """Collected output, or only its last `keep` bytes when a callback already took it all."""

    def __init__(self, keep: int | None):
        self.keep, self.data = keep, bytearray()

    def __iadd__(self, chunk: bytes) -> "_Buffer":
        self.data += chunk
        if self.keep is not None and len(self.data) > 2 * self.keep:   # trim now and then, not per chunk
            del self.data[:-self.keep]
        return self


def _send_all(channel, data, on_sent=None, chunk: int = 1 << 16) -> None:
    """Send bytes or a binary file in chunks, reporting the running total."""
    source = data if hasattr(data, "read") else io.BytesIO(data)
    sent = 0
    while block := source.read(chunk):
        channel.sendall(block)
        sent += len(block)
        if on_sent:
            on_sent(sent)
