"""One exception family: every failure a user can see carries a remedy and an exit code.

Exit codes are part of the interface (DESIGN.md): 0 ok, 1 a check failed,
2 usage or config error, 3 host unreachable or not ready.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


class DevboxError(Exception):
    """A failure with a one-line message and the remedy the user should try."""

    exit_code = EXIT_CHECK_FAILED

    def __init__(self, message: str, remedy: str = "", exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.remedy = remedy
        if exit_code is not None:
            self.exit_code = exit_code

    def one_line(self) -> str:
        return f"{self.message} ({self.remedy})" if self.remedy else self.message


class ConfigError(DevboxError):
    """Bad input: a config file, a flag, a key file. Exit 2."""

    exit_code = EXIT_USAGE


class KeyRejected(ConfigError):
    """A public key file that must never reach a box."""


class HostUnreachable(DevboxError):
    """SSH or Docker on the host cannot be used, or preflight failed. Exit 3."""

    exit_code = EXIT_UNREACHABLE


class RemoteCommandFailed(DevboxError):
    """A command on the host exited non-zero where success was required."""

    exit_code = EXIT_CHECK_FAILED


class CommandTimedOut(RemoteCommandFailed):
    """A command on the host gave no end within its time; `stdout` is what it printed."""

    def __init__(self, message: str, remedy: str, stdout: str, seconds: float):
        super().__init__(message, remedy)
        self.stdout, self.seconds = stdout, seconds


class CommandStalled(RemoteCommandFailed):
    """A command on the host printed nothing for its idle bound (a build stuck on a mirror)."""


class HostKeyMismatch(DevboxError):
    """A pinned host key changed: never accepted silently."""

    exit_code = EXIT_UNREACHABLE
