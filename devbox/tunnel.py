"""Local port forwards into a box with the OpenSSH client, through the box's own entry.

`ssh -N -L 127.0.0.1:LOCAL:127.0.0.1:PORT devbox-HOST` reaches the box's loopback by the
path the user's ssh takes (ProxyJump, the pinned host key, the entry's key), so nothing is
ever published on the host. One Tunnel is one such process, started again when the link
drops, until Ctrl-C; `devbox jupyter` and `devbox forward` share it.
"""
from __future__ import annotations

import errno
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Callable

from devbox.errors import ConfigError, HostUnreachable

# Keep-alives: a dead link is noticed within 45 s (3 unanswered, 15 s apart) and re-made.
ALIVE_OPTIONS = ("-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=3")
BACKOFF_S = (1, 2, 4, 8, 10)


@dataclass(frozen=True)
class Forward:
    """127.0.0.1:local_port on this machine -> 127.0.0.1:box_port in the box."""

    box_port: int
    local_port: int

    def option(self) -> str:
        return f"127.0.0.1:{self.local_port}:127.0.0.1:{self.box_port}"

    def as_dict(self) -> dict:
        return asdict(self)


def port_number(text: str, what: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ConfigError(f"{what} {text!r} is not a port number", "give ports as numbers 1..65535, e.g. 6006 or 6006:16006")
    return int(text)


def parse_forward(text: str) -> Forward:
    """PORT (the same port here) or PORT:LOCAL."""
    box, _, local = text.partition(":")
    return Forward(port_number(box, "box port"), port_number(local or box, "local port"))


def listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port here: binding it (as ssh does, with
    SO_REUSEADDR, so a closed tunnel's TIME_WAIT does not count) fails only then."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def require_free(port: int, remedy: str = "pick another local port (e.g. PORT:LOCAL)") -> int:
    """`port`, if nothing on this machine listens on it; `remedy` in the flag's own syntax."""
    if listening(port):
        raise ConfigError(f"local port {port} is already in use on this machine", remedy)
    return port


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def forward_options(forwards: list[Forward]) -> list[str]:
    """`ssh` options for local forwards only: no shell, fail at once when a port cannot be
    bound (ExitOnForwardFailure), no prompt that could hang (BatchMode), keep-alives."""
    options = ["-N", "-o", "ExitOnForwardFailure=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15", *ALIVE_OPTIONS]
    for forward in forwards:
        options += ["-L", forward.option()]
    return options


class Tunnel:
    """One `ssh -N -L …` process, re-made when the link drops, until close()."""

    def __init__(self, argv: list[str], ready: Callable[[], bool], say: Callable[[str], None] = lambda line: None):
        self.argv, self.ready, self.say = argv, ready, say
        self.process: subprocess.Popen | None = None
        self.errors: deque[str] = deque(maxlen=5)
        self.closed = False

    def _start(self) -> None:
        # Its own session: a terminal's Ctrl-C reaches devbox alone, which then closes the tunnel.
        self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True)
        threading.Thread(target=self._relay, args=(self.process,), name="tunnel-relay", daemon=True).start()

    def _relay(self, process: subprocess.Popen) -> None:
        """ssh's own messages (a refused channel, a dropped link) reach the user's stderr."""
        for line in process.stderr:
            if line.strip():
                self.errors.append(line.strip())
                self.say(f"ssh: {line.rstrip()}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            if self.ready():
                return True
            time.sleep(0.1)
        return False

    def open(self, timeout: float = 60) -> None:
        """Start and wait until `ready`; a first connection that fails is an error."""
        self._start()
        try:
            ready = self._wait_ready(timeout)
        except BaseException:  # Ctrl-C while waiting: no ssh left behind in its own session
            self.close()
            raise
        if not ready:
            code = self.process.poll()
            self.close()
            why = self.errors[-1] if self.errors else (f"ssh exited {code}" if code is not None else f"not ready within {timeout:.0f} s")
            raise HostUnreachable(f"the tunnel did not open: {why}", "check `ssh " + self.argv[-1] + " true` works (`devbox up` writes that entry)")

    def hold(self) -> None:
        """Until close() (or Ctrl-C): when ssh ends, say so and start it again, waiting longer each time."""
        failures = 0
        while not self.closed:
            # Polled, not one blocking wait(): the kernel may hand Ctrl-C's SIGINT to the relay
            # thread, and Python runs the handler only when the main thread next runs bytecode.
            while (code := self.process.poll()) is None:
                time.sleep(0.2)
            if self.closed:
                return
            wait = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
            self.say(f"devbox: the link dropped (ssh exit {code}); reconnecting in {wait} s")
            time.sleep(wait)
            self._start()
            if self._wait_ready(30):
                failures = 0
                self.say("devbox: reconnected")
            else:
                failures += 1

    def close(self) -> None:
        self.closed = True
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def run_until_interrupted(tunnel: Tunnel) -> None:
    """Hold the tunnel; Ctrl-C (or a TERM) closes it, and only it, and returns normally."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        tunnel.hold()
    except KeyboardInterrupt:
        pass
    finally:
        tunnel.close()
