"""Commands inside a box, sent through the host's Docker over the trusted host connection.

This is how devbox reaches a box before its host key is pinned (and for keys and
jobs afterwards): always as the login user, never as root.
"""
from __future__ import annotations

import shlex
import time

from devbox.boxenv import SECRETS_DIR, WRITE_SECRETS, BoxEnv
from devbox.config import BoxSpec
from devbox.errors import DevboxError, HostUnreachable, RemoteCommandFailed
from devbox.facts import AUTHORIZED_KEYS_DIR
from devbox.remote import Host, Result

STATE_DIR = ".devbox"
HOST_KEY = f"{STATE_DIR}/hostkeys/ssh_host_ed25519_key.pub"

# Atomic and live: sshd reads the file at each login, so rename() switches every
# future login at once and open sessions are untouched.
WRITE_AUTHORIZED_KEYS = (
    f'umask 077; cat > {AUTHORIZED_KEYS_DIR}/.authorized_keys.new '
    f'&& mv -f {AUTHORIZED_KEYS_DIR}/.authorized_keys.new {AUTHORIZED_KEYS_DIR}/authorized_keys'
)


def inspect_box(host: Host, spec: BoxSpec) -> dict | None:
    """The box's `docker inspect`, or None when there is none."""
    from devbox.facts import parse_inspect

    return parse_inspect(host.docker("container", "inspect", spec.box_name, check=False).stdout)


def _which(spec: BoxSpec) -> str:
    """"on gpu-host-3" for a host's own box, "alice-3 on gpu-host-3" for a named one."""
    return f"on {spec.host}" if spec.box.is_default else f"{spec.box.name} on {spec.host}"


def box_missing(spec: BoxSpec, doing: str = "") -> HostUnreachable:
    return HostUnreachable(f"no box {_which(spec)}" + (f" to {doing}" if doing else ""), f"run `devbox up {spec.box.name}`")


def box_stopped(spec: BoxSpec) -> HostUnreachable:
    return HostUnreachable(f"the box {_which(spec)} is stopped", f"run `devbox up {spec.box.name}`")


def running_box(host: Host, spec: BoxSpec, doing: str = "") -> dict:
    """The box's `docker inspect`; a missing or stopped box is an error that says what to run."""
    box = inspect_box(host, spec)
    if not box:
        raise box_missing(spec, doing)
    if not box.get("State", {}).get("Running"):
        raise box_stopped(spec)
    return box


# Docker's words (`docker exec` on the host) for a box that is not there to run in.
DOCKER_SAYS = "Error response from daemon"
BOX_STOPPED = ("is not running", "is paused", "is restarting")


def _raise_if_gone(spec: BoxSpec, text: str) -> None:
    if DOCKER_SAYS not in text:
        return
    if "No such container" in text:
        raise box_missing(spec)
    if any(words in text for words in BOX_STOPPED):
        raise box_stopped(spec)


def box_exec(host: Host, spec: BoxSpec, argv: list[str], stdin: bytes | None = None, check: bool = True, **kw) -> Result:
    """Run argv in the box as the login user (uid:gid), never root. A stopped or missing box
    says so and how to bring it back, not in Docker's words."""
    if spec.slurm is not None and not spec.slurm_job:
        return _read_stored(host, spec, argv, stdin, check, **kw)
    flags = ["-i"] if stdin is not None or kw.get("keep_stdin_open") else []
    try:
        result = host.docker("exec", *flags, "-u", f"{spec.uid}:{spec.gid}", "-e", f"HOME={spec.home}",
                             spec.box_name, *argv, stdin=stdin, check=check, **kw)
    except RemoteCommandFailed as exc:
        _raise_if_gone(spec, exc.message)
        raise
    if not result.ok:
        _raise_if_gone(spec, result.stderr)
    return result


def _read_stored(host: Host, spec: BoxSpec, argv: list[str], stdin: bytes | None, check: bool, **kw) -> Result:
    """A Slurm box whose job ended: its home is a folder on shared storage, read through the
    login node as its owner (`ps`, `logs`). No tmux server is reachable there, so a job
    that was running when the Slurm job ended reads as lost, which it is."""
    home = spec.volume_name(spec.all_volumes()[0])
    return host.run(["env", f"HOME={home}", "TMUX_TMPDIR=/nonexistent/devbox", *argv], stdin=stdin, check=check, **kw)


def box_sh(host: Host, spec: BoxSpec, script: str, stdin: bytes | None = None, check: bool = True, **kw) -> Result:
    return box_exec(host, spec, ["sh", "-c", script], stdin=stdin, check=check, **kw)


def throwaway_argv(spec: BoxSpec, image: str, volume: str, target: str, script: str) -> list[str]:
    """`docker run` of a throwaway writer of one volume at `target` (see _throwaway)."""
    return ["run", "--rm", "-i", *_throwaway(spec, volume, target), "--log-driver", "none",
            "--entrypoint", "sh", image, "-c", script]


def keys_writer_argv(spec: BoxSpec, image: str) -> list[str]:
    """The keys volume's writer, the only place it is writable: the box mounts it read-only,
    so no key holder can re-add a revoked key from inside (files stay the box uid's, as
    sshd's StrictModes wants)."""
    return throwaway_argv(spec, image, spec.keys_volume, AUTHORIZED_KEYS_DIR, WRITE_AUTHORIZED_KEYS)


def home_folders_argv(spec: BoxSpec, image: str, folders: list[str]) -> list[str]:
    """Make the folders above a shared cache inside the home as the box user: Docker would
    make a missing `~/.cache` for the mount as root, and the user could not write there."""
    script = "mkdir -p -- " + " ".join(shlex.quote(f"{spec.home}/{folder}") for folder in folders)
    # At the home's own path: a new volume gets the image's home (owned by the user) copied in first.
    return throwaway_argv(spec, image, spec.volume_name(spec.all_volumes()[0]), spec.home, script)


def volume_owner_argv(spec: BoxSpec, image: str, volume: str) -> list[str]:
    """`docker create` (never started) that gives an empty volume to the box user.

    Mounting an empty volume over a folder of the image copies that folder into it, its
    owner and mode included (Docker's copy-up, done at create). The keys folder is one
    the image makes empty and the user's, so a volume at a path the image lacks
    (/datasets) is the user's too, with no root and no capability. A volume with files
    in it is left as it is; the box's own mount still copies up an image folder there.
    """
    return ["create", *_throwaway(spec, volume), "--entrypoint", "true", image]


def _throwaway(spec: BoxSpec, volume: str, target: str = AUTHORIZED_KEYS_DIR) -> list[str]:
    """A helper container's confinement: the box image as the box's uid (files stay theirs), no
    network, no capabilities, a read-only root, labelled as ours, with `volume` at `target`."""
    return ["--pull", "never", "--network", "none", "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--read-only",
            "--user", f"{spec.uid}:{spec.gid}", "--label", "devbox.managed=true", "--label", f"devbox.host={spec.host}",
            "--mount", f"type={'bind' if volume.startswith('/') else 'volume'},source={volume},target={target}"]


def seed_home_argv(spec: BoxSpec, image: str, folder: str) -> list[str]:
    """Copy the image's home (its dotfiles, the folders the box expects) into a new home
    folder on shared storage: what Docker's copy-up does for a new home volume."""
    return throwaway_argv(spec, image, folder, SEED_TARGET, f"cp -a {shlex.quote(spec.home)}/. {SEED_TARGET}/")


SEED_TARGET = "/mnt/devbox-home"


def secrets_writer_argv(spec: BoxSpec, image: str) -> list[str]:
    """The secrets volume's writer: the values come on its stdin, never in its argv."""
    return throwaway_argv(spec, image, spec.secrets_volume, SECRETS_DIR, WRITE_SECRETS)


def write_authorized_keys(host: Host, spec: BoxSpec, image: str, content: str) -> None:
    host.docker(*keys_writer_argv(spec, image), stdin=content.encode())


def write_box_env(host: Host, spec: BoxSpec, image: str, env: BoxEnv) -> None:
    host.docker(*secrets_writer_argv(spec, image), stdin=env.payload())


def read_host_key(host: Host, spec: BoxSpec, wait_s: float = 20) -> str:
    """The box's host public key; waits for the entrypoint to make it on first start."""
    deadline = time.monotonic() + wait_s
    while True:
        result = box_exec(host, spec, ["cat", f"{spec.home}/{HOST_KEY}"], check=False)
        if result.ok and result.stdout.startswith("ssh-"):
            return result.stdout.strip()
        if time.monotonic() > deadline:
            raise DevboxError(
                f"{spec.box.name}: the box did not create its host key within {wait_s:.0f} s",
                f"see `ssh {spec.host} docker logs {spec.box_name}`",
            )
        time.sleep(0.2)
