"""Streaming delivery: `docker save` rewritten on the fly into the host's `docker load`.

No temp file and bounded memory: the save stream is read once, member by member, and
each layer the host lacks goes straight down the SSH channel; a layer it has is read
past. Which member is which layer is known before its bytes arrive (the save tar puts
manifest.json and the config AFTER the layers): Docker 25+ names a layer
`blobs/sha256/<diff id>`, older engines `<v1 id>/layer.tar`, where the v1 id is a hash
we recompute from the diff IDs `docker image inspect` gives (below).

`docker load` unpacks its whole input before registering any layer, so a link cut
mid-load keeps nothing. To keep what crossed, the stream is split into several loads:
once the layers sent so far complete a prefix of the image's layer list, that prefix is
committed as an untagged image labelled `devbox.partial=<image id>` (its layers then
stay on the host), and the next load carries on. The last load brings the real config
and tag and removes the partial images. A re-run after a cut sends only what is missing.

The parts overlap: while part N's load registers its layers on the host (as long as it
took to send them), part N+1 is already crossing; only its end-of-archive block waits
until part N's load has succeeded, since `docker load` reads nothing of a part before its
archive ends and part N+1's manifest names part N's layers (bench/streamfloor.py).
"""
from __future__ import annotations

import hashlib
import json
import queue
import shutil
import subprocess
import tarfile
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from devbox.errors import DevboxError, HostUnreachable, RemoteCommandFailed
from devbox.remote import why_failed

BLOCK = 512
END_OF_ARCHIVE = bytes(2 * BLOCK)
COMMIT_BYTES = 256 << 20      # a partial load costs ~0.3 s: commit only after this much
METADATA_LIMIT = 64 << 20     # configs, manifests, json, small layers: kept for the last load
SMALL_LAYER = 1 << 20         # a layer this small waits for the last load rather than block a commit
HOLD_LIMIT = 256 << 20        # layers that arrive before the ones below them: held up to this much, so
                              # the layers below commit without them (more parts, more overlap)
PARTIAL_LABEL = "devbox.partial"
LOAD = "docker load --quiet"


# ---------------------------------------------------------------- layer identities


def chain_ids(diff_ids: Iterable[str]) -> list[str]:
    """Docker's ChainID of each prefix: what a host's layer store knows a layer by."""
    chains: list[str] = []
    for diff in diff_ids:
        chains.append(diff if not chains else "sha256:" + hashlib.sha256(f"{chains[-1]} {diff}".encode()).hexdigest())
    return chains


def host_chains(host_layer_lists: Iterable[list[str]]) -> set[str]:
    """Every layer chain a host has, from each of its images' RootFS.Layers. A diff ID
    alone is not enough: the same layer on another parent is another chain."""
    return {chain for layers in host_layer_lists for chain in chain_ids(layers)}


# The empty v1 image Docker < 25 hashes for every layer but the top one (image/v1
# CreateID over V1Image{Created: epoch}, keys sorted as Go marshals a map).
_V1_CONTAINER_CONFIG = ('{"Hostname":"","Domainname":"","User":"","AttachStdin":false,"AttachStdout":false,'
                        '"AttachStderr":false,"Tty":false,"OpenStdin":false,"StdinOnce":false,"Env":null,"Cmd":null,'
                        '"Image":"","Volumes":null,"WorkingDir":"","Entrypoint":null,"OnBuild":null,"Labels":null}')


def legacy_v1_ids(diff_ids: list[str]) -> list[str]:
    """The `<v1 id>/` folder names of a legacy `docker save`, for all layers but the top one
    (whose id hashes the whole image config; it is the one folder not named here)."""
    ids, parent = [], ""
    for chain in chain_ids(diff_ids)[:-1]:
        fields = {"container_config": _V1_CONTAINER_CONFIG, "created": '"1970-01-01T00:00:00Z"', "layer_id": json.dumps(chain)}
        if parent:
            fields["parent"] = json.dumps("sha256:" + parent)
        parent = hashlib.sha256(("{" + ",".join(f'"{k}":{v}' for k, v in sorted(fields.items())) + "}").encode()).hexdigest()
        ids.append(parent)
    return ids


@dataclass(frozen=True)
class ImageLayers:
    """What `docker image inspect` says of the image: enough to route its save stream."""

    tag: str
    image_id: str
    diff_ids: tuple[str, ...]
    architecture: str = "amd64"
    os: str = "linux"

    def member_index(self) -> dict[str, int]:
        """Save-tar member name -> layer index, for both layouts `docker save` writes."""
        names = {f"{v1}/layer.tar": i for i, v1 in enumerate(legacy_v1_ids(list(self.diff_ids)))}
        for i, diff in enumerate(self.diff_ids):
            names.setdefault(f"blobs/sha256/{diff.removeprefix('sha256:')}", i)
        return names

    def layer_path(self, index: int) -> str:
        """The path a manifest may name a layer by (only read when the host lacks it)."""
        if index < len(self.diff_ids) - 1:
            return f"{legacy_v1_ids(list(self.diff_ids[:index + 2]))[index]}/layer.tar"
        return f"blobs/sha256/{self.diff_ids[index].removeprefix('sha256:')}"


def looks_like_layer(member: "Member") -> bool:
    """A member that may hold a layer's bytes though we cannot place it (the top layer of a
    legacy save, or an unforeseen layout): sent at once, never held in memory."""
    return member.name.endswith("/layer.tar") or (member.name.startswith("blobs/") and member.size > 1 << 20)


# ---------------------------------------------------------------- reading a tar stream


class ByteStream:
    """Exact-size reads over an iterator of chunks, holding at most one chunk."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks = iter(chunks)
        self._view = memoryview(b"")

    def pieces(self, size: int) -> Iterator[memoryview]:
        while size:
            if not self._view:
                chunk = next(self._chunks, None)
                if chunk is None:
                    raise DevboxError("the image stream from the local Docker engine ended in the middle of a file",
                                      "check `docker save IMAGE | tar t` works on this machine")
                self._view = memoryview(chunk)
            piece, self._view = self._view[:size], self._view[size:]
            size -= len(piece)
            yield piece

    def read(self, size: int) -> bytes:
        return b"".join(self.pieces(size))


def padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


@dataclass
class Member:
    """One member of the save tar: its raw header blocks (extended ones included) and size."""

    name: str
    header: bytes
    size: int
    regular: bool


def _pax_path(payload: bytes) -> str | None:
    while payload:
        length = int(payload.split(b" ", 1)[0])
        key, _, value = payload[:length].split(b" ", 1)[1].rstrip(b"\n").partition(b"=")
        if key == b"path":
            return value.decode("utf-8", "surrogateescape")
        payload = payload[length:]
    return None


def read_members(stream: ByteStream) -> Iterator[Member]:
    """Each member's header; the caller must take or skip `padded(size)` data bytes next."""
    while True:
        header = stream.read(BLOCK)
        if header == bytes(BLOCK):
            return
        long_name = None
        info = _header(header)
        while info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
            payload = stream.read(padded(info.size))
            header += payload
            if info.type == tarfile.XHDTYPE:
                long_name = _pax_path(payload[:info.size]) or long_name
            elif info.type == tarfile.GNUTYPE_LONGNAME:
                long_name = payload[:info.size].rstrip(b"\0").decode("utf-8", "surrogateescape")
            block = stream.read(BLOCK)
            header += block
            info = _header(block)
        name = (long_name or info.name).removeprefix("./")
        yield Member(name, header, info.size, info.type in tarfile.REGULAR_TYPES)


def _header(block: bytes) -> tarfile.TarInfo:
    try:
        return tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.TarError as exc:
        raise DevboxError(f"the image stream from the local Docker engine is not a tar ({exc})",
                          "check `docker save IMAGE | tar t` works on this machine") from exc


def tar_member(name: str, data: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    return info.tobuf(tarfile.USTAR_FORMAT) + data + bytes(padded(len(data)) - len(data))


# ---------------------------------------------------------------- the rewrite


@dataclass
class Rewrite:
    """Routes a save stream into loads: layers the host lacks go to the open load, layers it
    has are read past, metadata waits for the last load. `loads()` yields one iterator of
    bytes per `docker load`; consume each fully before asking for the next."""

    image: ImageLayers
    host_has: set[str]                      # chain IDs (host_chains)
    commit_bytes: int = COMMIT_BYTES
    sent_layers: set[int] = field(default_factory=set)
    committed: int = -1                     # layers [0..committed] are on the host (deliver sets it as loads end)
    proposed: int = -1                      # layers [0..proposed] are whole once the part read last is loaded
    partials: list[str] = field(default_factory=list)
    skipped: int = 0
    layer_bytes: int = 0

    def __post_init__(self):
        chains = chain_ids(self.image.diff_ids)
        self.present = [c in self.host_has for c in chains]
        self.index = self.image.member_index()
        # A repeated diff ID shares one file between positions: split loads could orphan it.
        self.splittable = len(set(self.image.diff_ids)) == len(self.image.diff_ids)
        self.loaded: set[int] = set()       # layers whose bytes went into a load already
        self.metadata: list[bytes] = []
        self.small: dict[int, bytes] = {}     # layers under SMALL_LAYER or out of order, held until a load needs them
        self.held_sizes: dict[int, int] = {}   # the out-of-order ones among them (HOLD_LIMIT)
        self._metadata_size = 0
        self.finished = False

    def skips(self, member: Member) -> bool:
        index = self.index.get(member.name)
        return index is not None and member.regular and self.present[index]

    def loads(self, chunks: Iterable[bytes]) -> Iterator[Iterator[bytes]]:
        stream = ByteStream(chunks)
        members = read_members(stream)
        while not self.finished:
            yield self._load(stream, members)

    def _load(self, stream: ByteStream, members: Iterator[Member]) -> Iterator[bytes]:
        in_this_load: list[int] = []
        unplaced = False            # a layer file we could not name: this load must be the last
        size = 0
        for member in members:
            data = padded(member.size)
            index = self.index.get(member.name)
            if self.skips(member):
                self.skipped += 1
                for _ in stream.pieces(data):
                    pass
                continue
            if index is None and not looks_like_layer(member):
                raw = member.header + stream.read(data)
                self._keep(raw)
                self._place_legacy_top(member.name, raw[len(member.header):len(member.header) + member.size])
                continue
            if index is not None and member.regular and member.size <= SMALL_LAYER:
                self.small[index] = self._keep(member.header + stream.read(data), hold=False)   # joins the load that needs it
                self.sent_layers.add(index)
                self.layer_bytes += member.size
                continue
            if index is not None and member.regular and self._holds(index, data):
                self.small[index] = member.header + stream.read(data)
                self.sent_layers.add(index)
                self.layer_bytes += member.size
                continue
            yield member.header
            yield from stream.pieces(data)
            size += len(member.header) + data
            if index is None or not member.regular:
                unplaced = True
                continue
            self.layer_bytes += member.size
            self.sent_layers.add(index)
            self.loaded.add(index)
            in_this_load.append(index)
            top = min(self._prefix_end(), len(self.present) - 2)   # the last layer comes with the image itself
            if not unplaced and self.splittable and size >= self.commit_bytes and max(in_this_load) <= top:
                yield from self._commit(top)
                return
        yield from self.small.values()
        yield from self.metadata
        self.proposed = len(self.present) - 1
        self.finished = True
        yield END_OF_ARCHIVE

    def _holds(self, index: int, size: int) -> bool:
        """Hold a layer that cannot join the next commit (a layer below it is still to come)
        while the held ones stay under HOLD_LIMIT: sent now, it would keep the open part
        from committing until that layer below arrives."""
        if not self.splittable or index <= self._prefix_end() + 1 or sum(self.held_sizes.values()) + size > HOLD_LIMIT:
            return False
        self.held_sizes[index] = size
        return True

    def _place_legacy_top(self, name: str, data: bytes) -> None:
        """A legacy save's top layer folder is the one whose v1 json names the
        next-to-top layer as its parent (its own id hashes the whole config)."""
        v1 = legacy_v1_ids(list(self.image.diff_ids))
        if not name.endswith("/json") or not v1 or f"{name[:-5]}/layer.tar" in self.index:
            return
        try:
            parent = json.loads(data).get("parent")
        except (ValueError, AttributeError):
            return
        if parent == v1[-1]:
            self.index[f"{name[:-5]}/layer.tar"] = len(self.image.diff_ids) - 1

    def _keep(self, raw: bytes, hold: bool = True) -> bytes:
        self._metadata_size += len(raw)
        if self._metadata_size > METADATA_LIMIT:
            raise DevboxError("the image's save stream has more metadata than expected (over 64 MB outside its layers)",
                              "deliver it with `delivery = \"build\"` in devbox.toml, or report this image layout")
        if hold:
            self.metadata.append(raw)
        return raw

    def _prefix_end(self) -> int:
        """The last index k such that every layer 0..k is on the host or sent."""
        k = -1
        while k + 1 < len(self.present) and (self.present[k + 1] or k + 1 in self.loaded or k + 1 in self.small):
            k += 1
        return k

    def _commit(self, top: int) -> Iterator[bytes]:
        """End this load as an untagged image of layers 0..top, labelled as ours."""
        config = json.dumps({
            "architecture": self.image.architecture, "os": self.image.os,
            "config": {"Labels": {PARTIAL_LABEL: self.image.image_id}},
            "rootfs": {"type": "layers", "diff_ids": list(self.image.diff_ids[:top + 1])},
        }, sort_keys=True).encode()
        name = hashlib.sha256(config).hexdigest()
        manifest = json.dumps([{"Config": f"{name}.json", "RepoTags": None,
                                "Layers": [self.image.layer_path(i) for i in range(top + 1)]}]).encode()
        self.proposed = top
        self.partials.append("sha256:" + name)
        for index in [i for i in self.small if i <= top]:
            self.loaded.add(index)
            self.held_sizes.pop(index, None)
            yield self.small.pop(index)
        yield tar_member(f"{name}.json", config)
        yield tar_member("manifest.json", manifest)
        yield END_OF_ARCHIVE


# ---------------------------------------------------------------- sending it


class ChunkReader:
    """A file-like `read(n)` over an iterator of byte pieces (what Host.run sends from)."""

    def __init__(self, pieces: Iterable[bytes]):
        self._pieces = iter(pieces)
        self._view = memoryview(b"")

    def read(self, size: int = -1) -> bytes:
        while not self._view:
            piece = next(self._pieces, None)
            if piece is None:
                return b""
            self._view = memoryview(piece)
        size = len(self._view) if size < 0 else size
        out, self._view = self._view[:size], self._view[size:]
        return bytes(out)


@dataclass
class Delivered:
    bytes_sent: int
    layers_sent: int
    layers_skipped: int
    loads: int


def inspect_local(tag: str) -> ImageLayers:
    from devbox.image import _docker_client as docker_client

    attrs = docker_client().images.get(tag).attrs
    return ImageLayers(tag, attrs["Id"], tuple(attrs["RootFS"]["Layers"]), attrs.get("Architecture", "amd64"), attrs.get("Os", "linux"))


def save_stream(tag: str, ahead: int = 32) -> "ReadAhead":
    """The local engine's `docker save` of tag in 1 MiB chunks, read by a thread of its own
    up to `ahead` chunks in advance: the engine's export and the SSH send then overlap as
    in a shell pipe (read in turn, each waited on the other: 1.1-1.8x slower, bench/delivery.py).
    It starts at once: Docker 20.10 exports the whole image before its first byte (12 s for
    2.5 GB here), time in which the caller asks the host what it has.
    The docker CLI when there is one (its pipe costs less per byte than the SDK's chunked
    HTTP), else the SDK. Close it when done with it."""
    source = _cli_save(tag) if shutil.which("docker") else _sdk_save(tag)
    return ReadAhead(source, ahead)


def _cli_save(tag: str) -> Iterator[bytes]:
    process = subprocess.Popen(["docker", "save", tag], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        while chunk := process.stdout.read(1 << 20):
            yield chunk
        if process.wait() != 0:
            said = process.stderr.read().decode(errors="replace").strip().splitlines()
            raise DevboxError(f"`docker save {tag}` failed: {said[-1] if said else f'exit {process.returncode}'}",
                              f"check `docker save {tag} > /dev/null` works on this machine")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()


def _sdk_save(tag: str) -> Iterator[bytes]:
    from devbox.image import _docker_client as docker_client

    try:
        yield from docker_client().images.get(tag).save(chunk_size=1 << 20, named=tag)
    except DevboxError:
        raise
    except Exception as exc:  # the SDK and requests raise several unrelated types
        raise DevboxError(f"reading {tag} from the local Docker engine failed ({exc.__class__.__name__}: {exc})",
                          f"check `docker save {tag} > /dev/null` works on this machine") from exc


class ReadAhead:
    """Iterate `source` in a thread started now, at most `depth` items ahead (bounded memory);
    its errors are raised to the reader. `close()` (also when iterating ends early) stops the
    thread and closes the source, whether or not anything was read."""

    def __init__(self, source: Iterable[bytes], depth: int):
        self._items: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, args=(source,), name="docker-save-reader", daemon=True)
        self._thread.start()

    def _pump(self, source: Iterable[bytes]) -> None:
        iterator = iter(source)
        try:
            for item in iterator:
                if not self._put(("item", item)):
                    return
            self._put(("end", None))
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(("error", exc))
        finally:
            close = getattr(iterator, "close", None)
            if close:
                close()

    def _put(self, entry: tuple) -> bool:
        """Queue it unless closed first; False when closed."""
        while not self._stop.is_set():
            try:
                self._items.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[bytes]:
        try:
            while True:
                kind, item = self._items.get()
                if kind == "end":
                    return
                if kind == "error":
                    raise item
                yield item
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def load_command(image_id: str) -> str:
    """Every load runs the same: once the image itself is there, the partial images of
    earlier loads go (their layers stay, the image holds them)."""
    partials = f"docker image ls -q --filter label={PARTIAL_LABEL}={image_id}"
    return (f"{LOAD} && {{ ! docker image inspect {image_id} >/dev/null 2>&1 || "
            f"{partials} | xargs -r docker rmi >/dev/null 2>&1; true; }}")


class _EarlierPartFailed(Exception):
    """Raised into a part's input when the part before it failed: its archive must not end."""


class _Part:
    """One `docker load` of a delivery, sent by a thread of its own so that the next part can
    start crossing as soon as this one's input is read (`input_read`), while this one's
    load still registers its layers on the host (`done`)."""

    def __init__(self, host, command: str, load: Iterator[bytes], rewrite: Rewrite, previous: "_Part | None",
                 base: int, on_sent: Callable[[int], None]):
        self.host, self.command, self.rewrite, self.previous = host, command, rewrite, previous
        self.base, self.on_sent = base, on_sent
        self.sent, self.top = 0, -1
        self.result = None
        self.error: BaseException | None = None
        self.input_read, self.done = threading.Event(), threading.Event()
        threading.Thread(target=self._send, args=(load,), name="docker-load-part", daemon=True).start()

    def _send(self, load: Iterator[bytes]) -> None:
        try:
            self.result = self.host.stream(self.command, ChunkReader(self._input(load)), self._meter)
        except BaseException as exc:  # handed to deliver(), raised there in the parts' order
            self.error = exc
        finally:
            self.input_read.set()
            self.done.set()

    def _input(self, load: Iterator[bytes]) -> Iterator[bytes]:
        for piece in load:
            if piece is END_OF_ARCHIVE and self.previous is not None:   # the rewrite yields this very object last
                self.previous.wait_loaded()
            yield piece
        self.top = self.rewrite.proposed
        self.input_read.set()

    def _meter(self, count: int) -> None:
        self.sent = count
        self.on_sent(self.base + count)

    def loaded(self) -> bool:
        return self.error is None and self.result is not None and self.result.ok

    def wait_loaded(self) -> None:
        self.done.wait()
        if not self.loaded():
            raise _EarlierPartFailed()


def deliver(host, rewrite: Rewrite, chunks: Iterable[bytes], on_sent: Callable[[int], None] = lambda n: None) -> Delivered:
    """Send the rewrite of `chunks`, one `docker load` per part, each part crossing while the
    one before it loads; a link dropped after a part's load ended leaves its layers on the
    host for the next run."""
    command = load_command(rewrite.image.image_id)
    parts: list[_Part] = []
    for load in rewrite.loads(chunks):
        previous = parts[-1] if parts else None
        parts.append(_Part(host, command, load, rewrite, previous, previous.base + previous.sent if previous else 0, on_sent))
        parts[-1].input_read.wait()
        if parts[-1].error is not None:
            break
    for part in parts:
        part.done.wait()
    sent = sum(part.sent for part in parts)
    for part in parts:
        if part.loaded():
            rewrite.committed = part.top
            continue
        if isinstance(part.error, HostUnreachable):
            raise HostUnreachable(
                f"{host.alias}: the link dropped while sending {rewrite.image.tag} ({sent / 1e6:.0f} MB sent; "
                f"{rewrite.committed + 1} of {len(rewrite.present)} layers kept on the host)",
                f"re-run `devbox up {host.alias}`: it sends only the layers the host still lacks") from part.error
        if part.error is not None:
            raise part.error
        done = part.result
        raise RemoteCommandFailed(f"{host.alias}: `docker load` of {rewrite.image.tag} exited {done.exit_code}: "
                                  f"{why_failed(done)}", f"check the host's Docker and its free disk, then re-run `devbox up {host.alias}`")
    return Delivered(sent, len(rewrite.sent_layers), rewrite.skipped, len(parts))


def todo_bytes(tag: str, present: list[bool]) -> int | None:
    """About how many bytes the missing layers make, for the ETA (docker history's sizes,
    when they map one to one onto the layers; None when they do not)."""
    from devbox.image import _docker_client as docker_client

    sizes = [entry.get("Size", 0) for entry in reversed(docker_client().api.history(tag))]
    layers = [size for size in sizes if size > 0]
    if len(layers) == len(present):
        return sum(size for size, there in zip(layers, present) if not there)
    return sum(sizes) if not any(present) else None
