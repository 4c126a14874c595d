"""`devbox ssh / attach / code`: the argv that hands the terminal to OpenSSH or VS Code."""
from __future__ import annotations

import shlex

from devbox import sshconfig
from devbox.config import validate_host
from devbox.errors import ConfigError
from devbox.jobs import attach_script, validate_name


def box_ssh(host: str, *options: str) -> list[str]:
    """`ssh [options] -F CONFIG -- devbox-HOST`: after `--`, OpenSSH reads no more options, so
    neither the host nor a command word (`-oProxyCommand=…`) can become one."""
    return ["ssh", *options, "-F", str(sshconfig.user_config_path()), "--", sshconfig.BOX_PREFIX + validate_host(host)]


def attach(host: str, name: str, read_only: bool) -> list[str]:
    validate_name(name)
    # one word for ssh, which joins its command words with spaces for the box's shell
    return [*box_ssh(host, "-t"), shlex.join(["sh", "-c", attach_script(host, name, read_only)])]


def vscode(host: str, path: str) -> list[str]:
    if not path.startswith("/"):
        raise ConfigError(f"{path!r} is not an absolute path in the box", "give a folder like /workspace")
    return ["code", "--remote", f"ssh-remote+{sshconfig.BOX_PREFIX}{validate_host(host)}", path]
