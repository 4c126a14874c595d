"""Delivery through the team's registry: the image leaves this machine once, hosts pull it.

`publish` builds the image here (or reuses it) and pushes it, once per process whatever the
number of hosts (their workers wait on one lock; a failure is remembered, not retried per
host); the registry skips layers it has. Each host then pulls by the digest the push
reported, over its own network, and tags it with the content tag devbox checks, so facts
and plans see the image as if it had been built there. Credentials stay where they are:
this machine's Docker config for the push, the host's own `docker login` for the pull.
"""
from __future__ import annotations

import shlex
import threading
from dataclasses import dataclass
from typing import Callable

from devbox.errors import DevboxError, HostUnreachable
from devbox.image import ImageSpec

Progress = Callable[[str], None]

# What the engine says (push here or pull on a host), by what the user must do about it.
UNREACHABLE = ("connection refused", "no such host", "i/o timeout", "dial tcp", "network is unreachable",
               "no route to host", "server gave http response to https client", "tls:", "x509:")
CREDENTIALS = ("unauthorized", "authentication required", "no basic auth credentials", "denied", "forbidden")
MISSING = ("manifest unknown", "not found", "does not exist", "name unknown")


def why_kind(said: str) -> str:
    """"unreachable", "credentials", "missing" or "other", from an engine's error text."""
    text = said.lower()
    for kind, marks in (("credentials", CREDENTIALS), ("unreachable", UNREACHABLE), ("missing", MISSING)):
        if any(mark in text for mark in marks):
            return kind
    return "other"


def registry_host(registry: str) -> str:
    """The part `docker login` takes: `reg.lab:5000` of `reg.lab:5000/devbox`."""
    return registry.partition("/")[0]


def remote_ref(registry: str, tag: str) -> str:
    """`devbox-ssh:<hash>` as the registry holds it: `reg.lab:5000/devbox/devbox-ssh:<hash>`."""
    return f"{registry}/{tag}"


def pinned_ref(registry: str, tag: str, digest: str) -> str:
    """The pull reference: by digest, so a host gets exactly what was pushed."""
    return f"{registry}/{tag.partition(':')[0]}@{digest}"


def pull_script(registry: str, tag: str, digest: str) -> str:
    """On the host: pull by digest, then give it the content tag devbox looks for."""
    ref = pinned_ref(registry, tag, digest)
    return f"{shlex.join(['docker', 'pull', '--quiet', ref])} >/dev/null && {shlex.join(['docker', 'tag', ref, tag])}"


def pull_failure(host: str, registry: str, tag: str, said: str) -> DevboxError:
    """One line naming the host, the registry and the remedy for a failed pull."""
    where, last = registry_host(registry), (said.strip().splitlines() or ["no output"])[-1]
    kind = why_kind(said)
    if kind == "unreachable":
        return HostUnreachable(f"{host}: cannot reach registry {registry} ({last})",
                               f"let {host} reach {where} (DNS, firewall, proxy; http needs insecure-registries in its "
                               f"daemon.json), or set delivery = \"registry,stream\" to send the image over SSH instead")
    if kind == "credentials":
        return DevboxError(f"{host}: registry {registry} refused the host's credentials ({last})",
                           f"run `docker login {where}` on {host} as its SSH user (devbox never copies credentials)")
    if kind == "missing":
        return DevboxError(f"{host}: registry {registry} lacks {tag} ({last})", f"re-run `devbox up {host}`: it pushes the image again")
    return DevboxError(f"{host}: pulling {tag} from {registry} failed ({last})", f"check `docker pull {remote_ref(registry, tag)}` on {host}")


def push_failure(registry: str, tag: str, said: str) -> DevboxError:
    where, last = registry_host(registry), (said.strip().splitlines() or ["no output"])[-1]
    kind = why_kind(said)
    if kind == "unreachable":
        return HostUnreachable(f"cannot push to registry {registry}: it does not answer ({last})",
                               f"start it or fix `registry` in devbox.toml; `docker push {remote_ref(registry, tag)}` must work here")
    if kind == "credentials":
        return DevboxError(f"registry {registry} refused this machine's credentials ({last})",
                           f"run `docker login {where}` here (devbox uses your Docker config and never copies it)")
    return DevboxError(f"pushing {tag} to {registry} failed ({last})", f"check `docker push {remote_ref(registry, tag)}` works here")


@dataclass(frozen=True)
class Published:
    digest: str
    bytes_pushed: int       # what this machine sent (0 for every caller but the one that pushed)
    layers_pushed: int


_published: dict[str, Published | DevboxError] = {}
_lock = threading.Lock()


def publish(image: ImageSpec, tag: str, registry: str, progress: Progress) -> Published:
    """The digest of `tag` in the registry; the first caller of the process pushes it."""
    ref = remote_ref(registry, tag)
    with _lock:
        first = ref not in _published
        if first:
            try:
                _published[ref] = _publish(image, tag, registry, progress)
            except DevboxError as exc:
                _published[ref] = exc
    found = _published[ref]
    if isinstance(found, DevboxError):
        raise found
    return found if first else Published(found.digest, 0, 0)


def _publish(image: ImageSpec, tag: str, registry: str, progress: Progress) -> Published:
    import docker.errors

    from devbox.image import _docker_client, build_locally, local_has_image

    client = _docker_client()
    if not local_has_image(tag):
        if not local_has_image(image.base):
            return Published(_registry_digest(client, image, tag, registry), 0, 0)
        progress(f"building {tag} on this machine for {registry}")
        build_locally(image)
    ref = remote_ref(registry, tag)
    progress(f"pushing {tag} to {registry} (the registry skips the layers it has)")
    client.api.tag(tag, ref.rpartition(":")[0], ref.rpartition(":")[2])
    try:
        return _push(client, registry, tag, ref)
    except docker.errors.APIError as exc:
        raise push_failure(registry, tag, str(exc)) from None
    finally:
        client.api.remove_image(ref, noprune=True)   # only the name: the image stays as `tag`


def _push(client, registry: str, tag: str, ref: str) -> Published:
    """Push through the local engine (it reads this machine's Docker credentials)."""
    sizes: dict[str, int] = {}
    digest = ""
    for event in client.api.push(ref.rpartition(":")[0], tag=ref.rpartition(":")[2], stream=True, decode=True):
        if "error" in event:
            raise push_failure(registry, tag, event["error"])
        if event.get("status") == "Pushing" and event.get("progressDetail", {}).get("total"):
            sizes[event["id"]] = event["progressDetail"]["total"]
        digest = event.get("aux", {}).get("Digest", digest)
    if not digest:
        raise push_failure(registry, tag, "the engine reported no digest")
    return Published(digest, sum(sizes.values()), len(sizes))


def _registry_digest(client, image: ImageSpec, tag: str, registry: str) -> str:
    """Neither the image nor its base is here: use the registry's copy if it has one."""
    import docker.errors

    try:
        return client.images.get_registry_data(remote_ref(registry, tag)).id
    except docker.errors.APIError as exc:
        if why_kind(str(exc)) in ("unreachable", "credentials"):
            raise push_failure(registry, tag, str(exc)) from None
        raise DevboxError(f"registry {registry} lacks {tag}, and this machine cannot build it (no base {image.base} here)",
                          f"pull or import {image.base} here, or run `devbox up` once from a machine that has it (it pushes)") from None
