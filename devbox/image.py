"""The box image: its content-hash tag, a local build (Docker SDK) and the build context.

The tag is a hash of everything that decides the image's content (the files in
images/ssh, the base, the build args), so "is it already there?" is one cheap
`docker image inspect` on any machine, and the same inputs never rebuild.
"""
from __future__ import annotations

import hashlib
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from devbox.errors import ConfigError, HostUnreachable
from devbox.resources import shipped_dir

IMAGE_REPO = "devbox-ssh"
DEFAULT_BASE_IMAGE = "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime"
CONTEXT_DIR = shipped_dir("images/ssh")


@dataclass(frozen=True)
class ImageSpec:
    """What decides the image's content: base, login user, and the package refresh label.

    The same inputs give the same tag forever, so openssh-server and tmux are as new as
    the first build. `refresh` is the knob: a new value is a new tag, and the build's
    apt step runs again (the value is in that step's cache key).
    """

    base: str = DEFAULT_BASE_IMAGE
    user: str = "dev"
    uid: int = 1000
    gid: int = 1000
    refresh: str = ""
    apt: tuple[str, ...] = ()   # the team's extras (config.py validates: names and pins only)
    pip: tuple[str, ...] = ()
    ca_bundle: str = ""         # a PEM file on this machine (config.py checks it); its certificates are in the tag

    def build_args(self) -> dict[str, str]:
        args = {
            "BASE_IMAGE": self.base,
            "DEVBOX_USER": self.user,
            "DEVBOX_UID": str(self.uid),
            "DEVBOX_GID": str(self.gid),
        }
        if self.refresh:  # absent when unset: existing tags stay as they were
            args["DEVBOX_REFRESH"] = self.refresh
        # Space-separated words, split by the Dockerfile with globbing off; in the tag
        # through build_args, so the same lists give the same tag and a new list a new one.
        if self.apt:
            args["DEVBOX_APT"] = " ".join(self.apt)
        if self.pip:
            args["DEVBOX_PIP"] = " ".join(self.pip)
        if self.ca_bundle:
            from devbox.cabundle import read_ca_bundle

            args["DEVBOX_CA"] = read_ca_bundle(self.ca_bundle)
        return args

    def build_command(self) -> str:
        """The `devbox build` line that makes this exact tag (for remedies)."""
        import shlex

        words = ["devbox", "build", "--base", self.base, "--user", self.user, "--uid", str(self.uid), "--gid", str(self.gid)]
        words += ["--refresh", self.refresh] if self.refresh else []
        words += [w for package in self.apt for w in ("--apt", package)]
        words += [w for package in self.pip for w in ("--pip", package)]
        words += ["--ca-bundle", self.ca_bundle] if self.ca_bundle else []
        return shlex.join(words)


def context_files(context: Path = CONTEXT_DIR) -> list[Path]:
    """The files sent as build context, in a stable order."""
    if not (context / "Dockerfile").is_file():
        raise ConfigError(f"no Dockerfile in {context}", "reinstall devbox (`pipx install --force .` from a checkout): its package lacks the image files")
    return sorted(p for p in context.rglob("*") if p.is_file())


def content_tag(spec: ImageSpec, context: Path = CONTEXT_DIR) -> str:
    """`devbox-ssh:<16 hex>`: same context, base and args give the same tag."""
    digest = hashlib.sha256()
    for path in context_files(context):
        digest.update(path.relative_to(context).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    for key, value in sorted(spec.build_args().items()):
        digest.update(f"{key}={value}\0".encode())
    return f"{IMAGE_REPO}:{digest.hexdigest()[:16]}"


def context_tar(context: Path = CONTEXT_DIR) -> bytes:
    """The build context as a reproducible gzipped tar (fixed mtimes, owners and modes: a wheel
    install or a checkout's umask must not change the layers a tag stands for): a few KB.
    Gzipped because a tar pads to 10 KiB records (half of it zeros); Docker unpacks either."""
    import gzip

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in context_files(context):
            info = tar.gettarinfo(str(path), arcname=path.relative_to(context).as_posix())
            info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = 0, 0, 0, "", "", 0o644
            with path.open("rb") as handle:
                tar.addfile(info, handle)
    return gzip.compress(buffer.getvalue(), mtime=0)


@dataclass
class BuildResult:
    tag: str
    built: bool
    base: str
    seconds: float = 0.0
    size_added: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def text(self) -> str:
        verb = "built" if self.built else "reused"
        return f"{verb} {self.tag} on {self.base} (adds {self.size_added / 1e6:.1f} MB, {self.seconds:.1f} s)"


def _docker_client():
    import docker  # imported lazily: `devbox --help` must stay fast

    try:
        client = docker.from_env()
        client.ping()
        return client
    except Exception as exc:  # the SDK raises several unrelated types for "no engine"
        raise HostUnreachable(
            f"cannot reach the local Docker engine: {exc.__class__.__name__}",
            "start dockerd (or set DOCKER_HOST) and check you may use /var/run/docker.sock",
        ) from exc


def _layer_size_added(client, tag: str, base: str) -> int:
    """Bytes the devbox layers add on top of the base image."""
    return client.images.get(tag).attrs["Size"] - client.images.get(base).attrs["Size"]


def build_locally(spec: ImageSpec, on_progress: Callable[[str], None] = lambda line: None) -> BuildResult:
    """Build with the local Docker engine unless the content tag already exists."""
    import time

    import docker.errors

    client = _docker_client()
    tag = content_tag(spec)
    try:
        client.images.get(tag)
        return BuildResult(tag, False, spec.base, 0.0, _layer_size_added(client, tag, spec.base))
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.APIError:
        pass
    _require_base(client, spec.base)
    start = time.monotonic()
    for line in _stream_build(client, tag, spec):
        on_progress(line)
    elapsed = time.monotonic() - start
    return BuildResult(tag, True, spec.base, round(elapsed, 2), _layer_size_added(client, tag, spec.base))


def _require_base(client, base: str) -> None:
    import docker.errors

    try:
        client.images.get(base)
        return
    except docker.errors.ImageNotFound:
        pass
    try:
        client.images.pull(base)
    except docker.errors.APIError as exc:
        raise ConfigError(
            f"base image {base!r} is not on this machine and cannot be pulled",
            "pull or import it first, or pass --base with an image that `docker images` lists",
        ) from exc


def _stream_build(client, tag: str, spec: ImageSpec) -> Iterator[str]:
    """Yield build output lines; raise DevboxError naming the failed step and its last lines."""
    from devbox.buildlog import BuildLog

    log = BuildLog()
    stream = client.api.build(
        fileobj=io.BytesIO(context_tar()), custom_context=True, encoding="gzip", tag=tag, rm=True,
        forcerm=True, decode=True, buildargs=spec.build_args(),
        labels={"devbox.image": "ssh", "devbox.base": spec.base},
    )
    for chunk in stream:
        if "error" in chunk:
            log.feed(chunk["error"] + "\n")
            raise log.failure("this machine")
        text = chunk.get("stream", "")
        log.feed(text)
        if text.strip():
            yield text.rstrip()


# ---------------------------------------------------------------- streaming delivery (devbox/delivery.py)


def local_has_image(tag: str) -> bool:
    """Whether this machine's Docker engine has the tag (so it can stream it)."""
    try:
        import docker.errors

        _docker_client().images.get(tag)
        return True
    except (HostUnreachable, docker.errors.ImageNotFound, docker.errors.APIError):
        return False
