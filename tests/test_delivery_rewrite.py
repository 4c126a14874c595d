"""The streaming rewrite of `docker save` (devbox/delivery.py) on real save output.

The legacy layout is this machine's own `docker save` (Docker 20.10); the OCI layout of
Docker 25+ (`blobs/sha256/<diff id>`, manifest.json after the blobs) is made from the
same real layers, member by member, in the order those engines write it.
"""
from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile

import pytest

from devbox.delivery import ImageLayers, Rewrite, chain_ids, host_chains, inspect_local, legacy_v1_ids, save_stream, tar_member


@pytest.fixture(scope="module")
def saved(box_image):
    """(ImageLayers, the real legacy save bytes, the base image's layers)."""
    base = json.loads(subprocess.run(["docker", "image", "inspect", "--format", "{{json .RootFS.Layers}}", box_image.base],
                                     capture_output=True, text=True, check=True).stdout)
    return inspect_local(box_image.tag), b"".join(save_stream(box_image.tag)), base


def oci_layout(image: ImageLayers, legacy: bytes) -> bytes:
    """The same image as Docker 25+ saves it: blobs named by digest first, then index.json,
    manifest.json (naming the blobs), oci-layout and repositories."""
    source = tarfile.open(fileobj=io.BytesIO(legacy))
    manifest = json.load(source.extractfile("manifest.json"))[0]
    config = source.extractfile(manifest["Config"]).read()
    blobs = {hashlib.sha256(config).hexdigest(): config}
    for path in manifest["Layers"]:
        data = source.extractfile(path).read()
        blobs[hashlib.sha256(data).hexdigest()] = data
    new_manifest = [{"Config": f"blobs/sha256/{hashlib.sha256(config).hexdigest()}", "RepoTags": manifest["RepoTags"],
                     "Layers": [f"blobs/sha256/{d.removeprefix('sha256:')}" for d in image.diff_ids]}]
    out = b"".join(tar_member(f"blobs/sha256/{digest}", blobs[digest]) for digest in sorted(blobs))
    out += tar_member("index.json", b"{}") + tar_member("manifest.json", json.dumps(new_manifest).encode())
    out += tar_member("oci-layout", b'{"imageLayoutVersion":"1.0.0"}') + tar_member("repositories", b"{}")
    return out + bytes(1024)


def chunks(data: bytes, size: int = 65536):
    return (data[i:i + size] for i in range(0, len(data), size))


def run_rewrite(image, data, host_layers, commit_bytes=1 << 40):
    rewrite = Rewrite(image, host_chains([host_layers]), commit_bytes=commit_bytes)
    loads = [b"".join(load) for load in rewrite.loads(chunks(data))]
    return rewrite, [tarfile.open(fileobj=io.BytesIO(load)) for load in loads]


def layer_digests(tar: tarfile.TarFile, image: ImageLayers) -> dict[str, str]:
    """Layer file name -> its diff ID (the sha256 of its bytes), for the image's layers in tar."""
    digests = {m.name: "sha256:" + hashlib.sha256(tar.extractfile(m).read()).hexdigest() for m in tar.getmembers() if m.isfile()}
    return {name: digest for name, digest in digests.items() if digest in image.diff_ids}


def test_the_v1_folder_names_are_recomputed_from_the_diff_ids(saved):
    image, legacy, _ = saved
    manifest = json.load(tarfile.open(fileobj=io.BytesIO(legacy)).extractfile("manifest.json"))[0]
    folders = [path.split("/")[0] for path in manifest["Layers"]]
    assert legacy_v1_ids(list(image.diff_ids)) == folders[:-1]
    # what the layer store knows each layer by: the chain of its diff IDs
    assert chain_ids(image.diff_ids)[0] == image.diff_ids[0] and len(set(chain_ids(image.diff_ids))) == len(image.diff_ids)


@pytest.mark.parametrize("layout", ["legacy (Docker < 25)", "oci (Docker 25+)"])
def test_layers_the_host_has_are_left_out_and_the_rest_is_byte_exact(saved, layout):
    image, legacy, base = saved
    data = legacy if layout.startswith("legacy") else oci_layout(image, legacy)
    rewrite, loads = run_rewrite(image, data, base)
    assert len(loads) == 1
    names = loads[0].getnames()
    assert "manifest.json" in names and "repositories" in names
    sent = set(layer_digests(loads[0], image).values())
    assert not sent & set(base), "a layer the host has was sent"
    assert sent == {d for d, there in zip(image.diff_ids, rewrite.present) if not there}   # each byte-exact
    assert rewrite.skipped == len(base)


@pytest.mark.parametrize("layout", ["legacy (Docker < 25)", "oci (Docker 25+)"])
def test_nothing_on_the_host_sends_every_layer(saved, layout):
    image, legacy, _ = saved
    data = legacy if layout.startswith("legacy") else oci_layout(image, legacy)
    rewrite, loads = run_rewrite(image, data, [])
    assert rewrite.skipped == 0 and rewrite.present == [False] * len(image.diff_ids)
    assert set(layer_digests(loads[0], image).values()) == set(layer_digests(tarfile.open(fileobj=io.BytesIO(data)), image).values())


@pytest.mark.parametrize("layout", ["legacy (Docker < 25)", "oci (Docker 25+)"])
def test_parts_commit_only_whole_prefixes_and_never_send_a_layer_twice(saved, layout):
    """With a commit after every layer that completes a prefix: each part but the last is
    an untagged image of layers 0..k whose files are all in it or on the host."""
    image, legacy, _ = saved
    data = legacy if layout.startswith("legacy") else oci_layout(image, legacy)
    rewrite, loads = run_rewrite(image, data, [], commit_bytes=1)
    assert len(loads) >= 2, "the base layer alone completes a prefix: at least one part before the last"
    seen: list[str] = []
    for part in loads[:-1]:
        manifest = json.load(part.extractfile("manifest.json"))[0]
        config = json.load(part.extractfile(manifest["Config"]))
        prefix = config["rootfs"]["diff_ids"]
        assert prefix == list(image.diff_ids[:len(prefix)]) and manifest["RepoTags"] is None
        assert config["config"]["Labels"] == {"devbox.partial": image.image_id}
        here = list(layer_digests(part, image).values())
        assert set(here) <= set(prefix) and set(prefix) <= set(here) | set(seen)
        seen += here
    final = loads[-1]
    assert json.load(final.extractfile("manifest.json"))[0]["RepoTags"] == [image.tag]
    seen += list(layer_digests(final, image).values())
    assert len(seen) == len(set(seen))


# ---------------------------------------------------------------- parts that overlap (issue 26: the OpenSSH floor)


def synthetic_image(order: list[int], sizes: list[int]) -> tuple[ImageLayers, bytes]:
    """An image of random layers saved in the Docker 25+ layout with its layer files in `order`
    (a save writes them by name, not bottom first): the order decides when a part can commit."""
    import os

    layers = [os.urandom(size) for size in sizes]
    diffs = ["sha256:" + hashlib.sha256(data).hexdigest() for data in layers]
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": diffs}}).encode()
    image = ImageLayers("synthetic:1", "sha256:" + hashlib.sha256(config).hexdigest(), tuple(diffs))
    out = b"".join(tar_member(f"blobs/sha256/{diffs[i].removeprefix('sha256:')}", layers[i]) for i in order)
    out += tar_member(f"blobs/sha256/{image.image_id.removeprefix('sha256:')}", config)
    manifest = [{"Config": f"blobs/sha256/{image.image_id.removeprefix('sha256:')}", "RepoTags": [image.tag],
                 "Layers": [f"blobs/sha256/{d.removeprefix('sha256:')}" for d in diffs]}]
    return image, out + tar_member("manifest.json", json.dumps(manifest).encode()) + bytes(1024)


def part_prefixes(loads: list[tarfile.TarFile]) -> list[int]:
    """How many layers each part but the last commits."""
    out = []
    for part in loads[:-1]:
        manifest = json.load(part.extractfile("manifest.json"))[0]
        out.append(len(json.load(part.extractfile(manifest["Config"]))["rootfs"]["diff_ids"]))
    return out


def test_a_layer_that_comes_before_the_ones_below_it_is_held_so_those_commit_first():
    """Saved order 2, 0, 1, 3: layer 2 waits in memory, so layer 0 commits alone and its
    load overlaps the next part; sent at once, it would hold every commit back until layer 1."""
    image, data = synthetic_image([2, 0, 1, 3], [2 << 20] * 4)
    rewrite, loads = run_rewrite(image, data, [], commit_bytes=1)
    assert part_prefixes(loads) == [1, 3]
    names = [set(layer_digests(part, image).values()) for part in loads]
    assert names == [{image.diff_ids[0]}, {image.diff_ids[1], image.diff_ids[2]}, {image.diff_ids[3]}]


def test_held_layers_stay_under_the_memory_limit(monkeypatch):
    import devbox.delivery as delivery

    monkeypatch.setattr(delivery, "HOLD_LIMIT", 3 << 20)     # room for one 2 MiB layer, not two
    image, data = synthetic_image([3, 2, 0, 1, 4], [2 << 20] * 5)
    rewrite, loads = run_rewrite(image, data, [], commit_bytes=1)
    assert part_prefixes(loads)[0] == 4, "layer 3 held, layer 2 sent at once: the first commit waits for layer 1"
    assert set(layer_digests(loads[0], image).values()) == {image.diff_ids[i] for i in (0, 1, 2, 3)}


class RecordingHost:
    """Stands in for Host.stream: reads each part's bytes as `docker load` would and records
    when its archive ended and when its load returned. The first part's load returns only
    once the second part is crossing (or after 30 s, which a serial sender always hits)."""

    alias = "fake-host"

    def __init__(self, first_exit: int = 0):
        import threading

        self.first_exit, self.events, self.parts = first_exit, [], []
        self.lock, self.second_crossing = threading.Lock(), threading.Event()

    def stream(self, command, source, on_sent):
        from devbox.remote import Result

        with self.lock:
            part = len(self.parts)
            self.parts.append(bytearray())
        while block := source.read(1 << 16):
            self.parts[part] += block
            if part == 1:
                self.second_crossing.set()
        self.events.append(("archive ended", part))
        if part == 0 and self.first_exit == 0:
            self.events.append(("second part crossing while the first loads", self.second_crossing.wait(30)))
        self.events.append(("loaded", part))
        return Result(command, self.first_exit if part == 0 else 0, "", "no space left on device" if part == 0 else "")


def test_the_next_part_crosses_while_one_loads_but_its_archive_ends_only_after(saved):
    from devbox.delivery import deliver

    image, legacy, _ = saved
    rewrite = Rewrite(image, host_chains([[]]), commit_bytes=1)
    host = RecordingHost()
    done = deliver(host, rewrite, iter(chunks(legacy)))
    assert done.loads == len(host.parts) >= 2
    assert host.events[:4] == [("archive ended", 0), ("second part crossing while the first loads", True), ("loaded", 0),
                               ("archive ended", 1)]
    assert rewrite.committed == len(image.diff_ids) - 1
    # every part is a whole archive, and the parts hold every layer once
    seen = [d for part in host.parts for d in layer_digests(tarfile.open(fileobj=io.BytesIO(bytes(part))), image).values()]
    assert sorted(seen) == sorted(set(image.diff_ids))


def test_when_a_part_fails_to_load_the_next_one_never_ends_its_archive(saved):
    from devbox.delivery import deliver
    from devbox.errors import RemoteCommandFailed

    image, legacy, _ = saved
    rewrite = Rewrite(image, host_chains([[]]), commit_bytes=1)
    host = RecordingHost(first_exit=1)
    with pytest.raises(RemoteCommandFailed) as failed:
        deliver(host, rewrite, iter(chunks(legacy)))
    assert "exited 1: no space left on device" in failed.value.one_line()
    assert ("archive ended", 1) not in host.events and rewrite.committed == -1
    assert len(host.parts) == 2 and host.parts[1], "the second part had started crossing: it is cut, not whole"
