"""Delivery through the team's registry (issue 26): the image leaves this machine once, each
host pulls it over its own network by digest; a registry that is down, refuses the
credentials or lacks the image stops `up` with one line before any box is touched."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import pytest

from conftest import SUFFIX, _require, add_host
import testbed as tb
from devbox.config import BoxSpec, load_spec
from devbox.errors import ConfigError
from devbox.facts import Facts
from devbox.plan import delivery_step
from devbox.registry import pull_failure, push_failure, pull_script, why_kind
from devbox.steps import BuildImage, PullImage, StreamImage

TAG = "devbox-ssh:0123456789abcdef"


# ---------------------------------------------------------------- pure: config and plan


def write_config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "devbox.toml"
    path.write_text(body)
    return path


@pytest.mark.parametrize("value", ["https://reg.lab:5000/devbox", "reg.lab:5000/devbox:latest", "team/devbox",
                                   "reg.lab/Devbox", "--insecure.lab/x", "reg.lab:70000/x", "reg.lab/x y",
                                   "reg.lab/x@sha256:00", "reg.lab//x", "reg.lab:5000/x;rm -rf /", "", 5000])
def test_a_bad_registry_reference_is_refused_naming_the_file_and_key(tmp_path, value):
    path = write_config(tmp_path, f"[defaults]\nregistry = {json.dumps(value)}\n")
    with pytest.raises(ConfigError) as refused:
        load_spec("gpu-1", path)
    assert "registry" in refused.value.message and str(path) in refused.value.message
    assert "no scheme" in refused.value.remedy and refused.value.exit_code == 2


@pytest.mark.parametrize("value", ["127.0.0.1:5000/devbox", "reg.lab:5000/team/devbox", "localhost:5000", "reg.lab", "[::1]:5000/x"])
def test_a_registry_reference_docker_reads_as_a_registry_is_kept(tmp_path, value):
    path = write_config(tmp_path, f'[hosts.gpu-1]\nregistry = "{value}"\ndelivery = "registry,stream"\n')
    spec = load_spec("gpu-1", path)
    assert (spec.registry, spec.delivery) == (value, "registry,stream")


def test_delivery_through_a_registry_without_one_is_a_config_error(tmp_path):
    path = write_config(tmp_path, '[defaults]\ndelivery = "registry"\n')
    with pytest.raises(ConfigError) as refused:
        load_spec("gpu-1", path)
    assert "no registry is set" in refused.value.message and "[defaults]" in refused.value.message


def test_the_registry_is_not_part_of_the_box_spec_hash():
    """Moving delivery to a registry must not re-create running boxes."""
    assert BoxSpec("h").spec_hash(20000, TAG) == BoxSpec("h", registry="reg.lab/devbox").spec_hash(20000, TAG)


def facts(**kw) -> Facts:
    return Facts(docker_version="20.10", **kw)


@pytest.mark.parametrize("delivery", ["auto", "registry", "registry,stream"])
def test_a_registry_makes_the_host_pull_and_stream_only_when_told(delivery):
    step = delivery_step(BoxSpec("h", registry="reg.lab:5000/devbox", delivery=delivery), facts(), TAG, local_image=True)
    assert isinstance(step, PullImage)
    assert isinstance(step.fallback, StreamImage) == (delivery == "registry,stream")
    push, pull = step.commands()
    assert push.startswith(f"docker push reg.lab:5000/devbox/{TAG} ")
    assert pull.startswith("docker pull --quiet 'reg.lab:5000/devbox/devbox-ssh@<digest the push reports>'")
    assert pull.endswith(f"docker tag 'reg.lab:5000/devbox/devbox-ssh@<digest the push reports>' {TAG}")


def test_an_explicit_delivery_or_an_image_already_there_ignores_the_registry():
    spec = BoxSpec("h", registry="reg.lab/devbox")
    assert delivery_step(spec, facts(image_present=True), TAG, local_image=True) is None
    assert isinstance(delivery_step(BoxSpec("h", registry="reg.lab/devbox", delivery="stream"), facts(), TAG, True), StreamImage)
    assert isinstance(delivery_step(BoxSpec("h", registry="reg.lab/devbox", delivery="build"), facts(), TAG, True), BuildImage)


def test_the_pull_is_by_digest_and_quoted():
    script = pull_script("reg.lab:5000/devbox", TAG, "sha256:" + "a" * 64)
    assert script == (f"docker pull --quiet reg.lab:5000/devbox/devbox-ssh@sha256:{'a' * 64} >/dev/null && "
                      f"docker tag reg.lab:5000/devbox/devbox-ssh@sha256:{'a' * 64} {TAG}")


# What Docker 20.10 said on this bed (push from this machine, pull on a host).
SAID = {
    "unreachable": 'Get "https://127.0.0.1:9/v2/": dial tcp 127.0.0.1:9: connect: connection refused',
    "credentials": "no basic auth credentials",
    "missing": "manifest for 127.0.0.1:5000/devbox/devbox-ssh@sha256:00 not found: manifest unknown: manifest unknown",
}


@pytest.mark.parametrize("kind", SAID)
def test_each_registry_failure_is_told_with_its_remedy(kind):
    assert why_kind(SAID[kind]) == kind
    pulled = pull_failure("gpu-1", "reg.lab:5000/devbox", TAG, "Error response from daemon: " + SAID[kind])
    assert pulled.message.startswith("gpu-1: ") and "reg.lab:5000/devbox" in pulled.message
    remedy = {"unreachable": 'delivery = "registry,stream"', "credentials": "docker login reg.lab:5000` on gpu-1",
              "missing": "re-run `devbox up gpu-1`"}[kind]
    assert remedy in pulled.remedy
    if kind != "missing":
        pushed = push_failure("reg.lab:5000/devbox", TAG, SAID[kind])
        assert "reg.lab:5000/devbox" in pushed.message and ("docker login" in pushed.remedy) == (kind == "credentials")


# ---------------------------------------------------------------- the real bed: a fleet and a registry

FLEET = [f"reg-host-{i}{SUFFIX}" for i in (1, 2)]


@pytest.fixture(scope="session")
def fleet(testbed):
    """Two hosts, each its own empty dockerd (sharing this machine's network, so they reach a
    registry on 127.0.0.1 as a host reaches the lab's)."""
    _require(None if shutil.which("docker-registry") else "needs Debian's docker-registry (scripts/testbed-prereqs.sh)")
    engines, hosts = [], []
    try:
        for i, name in enumerate(FLEET):
            root = Path(tempfile.mkdtemp(prefix="devbox-regengine-", dir="/var/lib"))
            engines.append(tb.start_second_engine(root, [], tb.free_address_pool(), kind=6 + i))
            client = docker_config(engines[-1])
            client.mkdir(mode=0o700)
            shutil.chown(client, tb.OPS_USER)
            hosts.append(tb.start_fake_host(name, 60 + i, testbed.workdir, testbed.workdir / "authorized_keys",
                                            extra=f"SetEnv DOCKER_HOST={engines[-1].docker_host} DOCKER_CONFIG={client}\n"))
        yield list(zip(hosts, engines))
    finally:
        for thing in hosts + engines:
            thing.stop()


def docker_config(engine: tb.SecondEngine) -> Path:
    """The host user's own Docker client config (its `docker login`), one per host."""
    return engine.root / "client"


@pytest.fixture
def registry(tmp_path):
    reg = tb.start_registry(tmp_path / "registry")
    yield reg
    reg.stop()


@pytest.fixture
def fleet_laptop(laptop, fleet, box_image):
    """The laptop with the fleet in its ssh config; each host starts and ends with no image and no box."""
    for host, engine in fleet:
        add_host(laptop, host)
        empty(engine, box_image.tag)
    laptop.box_tag = box_image.tag
    yield laptop
    for _, engine in fleet:
        empty(engine, box_image.tag)


def empty(engine: tb.SecondEngine, tag: str) -> None:
    engine.remove_containers()
    (docker_config(engine) / "config.json").unlink(missing_ok=True)
    engine.docker("network", "prune", "-f")
    ids = engine.docker("image", "ls", "-q", "--filter", f"reference={tag.partition(':')[0]}").stdout.split()
    ids += engine.docker("image", "ls", "-q", "--filter", "reference=127.0.0.1:*/*/*").stdout.split()
    if ids:
        engine.docker("rmi", "-f", *set(ids))


def use_registry(laptop, address: str, delivery: str = "") -> None:
    toml = laptop.work / "devbox.toml"
    extra = f'registry = "{address}/devbox"\n' + (f'delivery = "{delivery}"\n' if delivery else "")
    toml.write_text(toml.read_text().replace("[defaults]\n", "[defaults]\n" + extra, 1))


def untouched(fleet) -> bool:
    """No box, volume, network or image of devbox on any host of the fleet."""
    for _, engine in fleet:
        for listing in (["ps", "-aq"], ["volume", "ls", "-q"], ["image", "ls", "-q"],
                        ["network", "ls", "-q", "--filter", "label=devbox.managed=true"]):
            if engine.docker(*listing).stdout.split():
                return False
    return True


def manifest_bytes(registry: tb.Registry, tag: str) -> int:
    """The image as the registry holds it: its config and (compressed) layers."""
    name, _, ref = tag.partition(":")
    request = urllib.request.Request(f"http://{registry.address}/v2/devbox/{name}/manifests/{ref}",
                                     headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    manifest = json.load(urllib.request.urlopen(request, timeout=10))
    return manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"])


def test_up_on_two_empty_hosts_pushes_the_image_once_and_each_host_pulls_it(fleet_laptop, fleet, registry):
    use_registry(fleet_laptop, registry.address)
    before = registry.stored_bytes()
    results, done = fleet_laptop.devbox.json("up", *FLEET, "--no-verify")
    assert [r["exit_code"] for r in results] == [0, 0], done.stdout + done.stderr
    assert [r["delivery"] for r in results] == ["registry", "registry"], "no host may get the image streamed"
    name, _, ref = fleet_laptop.box_tag.partition(":")
    assert len(registry.requests("PUT", f"/devbox/{name}/manifests/{ref}")) == 1, "pushed once for both hosts"
    sent, image = registry.stored_bytes() - before, manifest_bytes(registry, fleet_laptop.box_tag)
    assert image <= sent < 1.05 * image, f"{sent} bytes stored for an image of {image}: sent once, not per host"
    assert len(registry.requests("GET", f"/devbox/{name}/manifests/sha256:")) >= 2, "each host pulls by digest"
    for _, engine in fleet:
        running = engine.docker("ps", "--filter", "label=devbox.managed=true", "--format", "{{.Image}} {{.State}}").stdout.split()
        assert running == [fleet_laptop.box_tag, "running"]
    seen = len(registry.log.read_text().splitlines())
    again, done = fleet_laptop.devbox.json("up", *FLEET, "--no-verify")
    assert [(r["exit_code"], r["delivery"], r["changed"]) for r in again] == [(0, "none", False)] * 2, done.stderr
    assert not [line for line in registry.log.read_text().splitlines()[seen:] if '"GET /v2/' in line or '"PUT /v2/' in line
                or '"HEAD /v2/' in line], "a re-run neither pushes nor pulls"


def test_dry_run_shows_the_push_and_the_pull_and_sends_nothing(fleet_laptop, fleet, registry):
    use_registry(fleet_laptop, registry.address)
    done = fleet_laptop.devbox("up", FLEET[0], "--dry-run")
    assert done.returncode == 0, done.stderr
    assert f"$ docker push {registry.address}/devbox/{fleet_laptop.box_tag}" in done.stdout
    assert f"$ docker pull --quiet '{registry.address}/devbox/devbox-ssh@<digest the push reports>'" in done.stdout
    assert "docker save" not in done.stdout
    assert not registry.requests("PUT", "/") and untouched(fleet)


def one_line_failure(done: subprocess.CompletedProcess, fleet, *words: str, hosts: int = len(FLEET)) -> None:
    assert done.returncode != 0 and "Traceback" not in done.stdout + done.stderr
    failed = [line for line in done.stdout.splitlines() if "FAILED" in line]
    assert len(failed) == hosts, done.stdout + done.stderr
    for line in failed:
        assert all(word in line for word in words), line
    assert untouched(fleet), "a failed delivery touches no box"


def test_a_registry_that_is_down_stops_up_with_one_line_and_no_box(fleet_laptop, fleet):
    dead = f"127.0.0.1:{tb.free_port('127.0.0.1')}"
    use_registry(fleet_laptop, dead)
    done = fleet_laptop.devbox("up", *FLEET, "--no-verify")
    assert done.returncode == 3
    one_line_failure(done, fleet, f"cannot push to registry {dead}/devbox", "connection refused", "start it or fix `registry`")


def test_a_registry_that_refuses_the_credentials_stops_up_with_one_line_and_no_box(fleet_laptop, fleet, tmp_path):
    guarded = tb.start_registry(tmp_path / "guarded", users={"team": "s3cret-pass"})
    try:
        use_registry(fleet_laptop, guarded.address)
        done = fleet_laptop.devbox("up", *FLEET, "--no-verify")
        one_line_failure(done, fleet, f"registry {guarded.address}/devbox refused this machine's credentials",
                         f"docker login {guarded.address}` here")
        assert not guarded.requests("PUT", "/manifests/")
    finally:
        guarded.stop()


def test_a_registry_that_lacks_the_image_this_machine_cannot_build_stops_up_with_one_line(fleet_laptop, fleet, registry):
    use_registry(fleet_laptop, registry.address)
    toml = fleet_laptop.work / "devbox.toml"
    toml.write_text(toml.read_text().replace(tb.BASE_IMAGE, f"local/absent{SUFFIX}:1"))
    done = fleet_laptop.devbox("up", *FLEET, "--no-verify")
    one_line_failure(done, fleet, f"registry {registry.address}/devbox lacks devbox-ssh:", "cannot build it",
                     f"no base local/absent{SUFFIX}:1 here")


def login(address: str, env: dict | None = None, config: Path | None = None) -> None:
    argv = ["docker", *(["--config", str(config)] if config else []), "login", "-u", "team", "--password-stdin", address]
    subprocess.run(argv, input=PASSWORD, text=True, env=env, check=True, capture_output=True)


PASSWORD = "s3cret-pass"


def test_each_side_logs_in_with_its_own_credentials_and_none_is_copied(fleet_laptop, fleet, tmp_path):
    """This machine pushes with its Docker login; a host pulls with its own, and a host
    without one gets one line saying to `docker login` there (the laptop's is never sent)."""
    guarded = tb.start_registry(tmp_path / "guarded", users={"team": PASSWORD})
    try:
        use_registry(fleet_laptop, guarded.address)
        login(guarded.address, env=fleet_laptop.devbox.env)
        (host1, engine1), (host2, engine2) = fleet
        login(guarded.address, config=docker_config(engine1))
        shutil.chown(docker_config(engine1) / "config.json", tb.OPS_USER)
        results, done = fleet_laptop.devbox.json("up", *FLEET, "--no-verify", expect=None)
        assert (results[0]["exit_code"], results[0]["delivery"]) == (0, "registry"), done.stdout + done.stderr
        assert results[1]["exit_code"] != 0
        assert results[1]["error"].startswith(f"{FLEET[1]}: registry {guarded.address}/devbox refused the host's credentials")
        assert f"docker login {guarded.address}` on {FLEET[1]}" in results[1]["error"]
        assert not (docker_config(engine2) / "config.json").exists(), "the laptop's credentials were copied to the host"
        assert PASSWORD not in done.stdout + done.stderr
        assert not engine2.docker("ps", "-aq").stdout.split(), "the host that could not pull got no box"
    finally:
        guarded.stop()


def test_a_host_that_cannot_reach_the_registry_gets_one_line_or_the_stream_when_told(separate_laptop, registry, box_image):
    """The netns host has no route to this machine's 127.0.0.1: `registry` stops with one line
    naming it; `registry,stream` sends the image over SSH instead."""
    engine, host = separate_laptop.bed.engine, separate_laptop.inner_jump
    empty(engine, box_image.tag)
    toml = separate_laptop.work / "devbox.toml"
    streamed = toml.read_text()
    toml.write_text(streamed.replace('delivery = "stream"\n', f'registry = "{registry.address}/devbox"\ndelivery = "registry"\n'))
    done = separate_laptop.devbox("up", host, "--no-verify")
    assert done.returncode == 3
    one_line_failure(done, [], f"{host}: FAILED: cannot reach registry {registry.address}/devbox", f"let {host} reach", 'delivery = "registry,stream"', hosts=1)
    assert not engine.docker("ps", "-aq").stdout.split()
    toml.write_text(streamed.replace('delivery = "stream"\n', f'registry = "{registry.address}/devbox"\ndelivery = "registry,stream"\n'))
    done = separate_laptop.devbox("up", host, "--no-verify")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{host}: cannot reach registry {registry.address}/devbox" in done.stderr
    assert "sending the image over SSH instead" in done.stderr and re.search(r"sending \d+ of \d+ layers", done.stderr)
    assert engine.docker("ps", "--format", "{{.Image}}").stdout.split() == [box_image.tag]
    empty(engine, box_image.tag)


def test_with_nothing_here_to_stream_the_fallback_gives_the_registrys_line(fleet_laptop, fleet, registry):
    """`registry,stream` when this machine has neither the image nor its base: the registry's
    one line, not a stream that cannot start."""
    use_registry(fleet_laptop, registry.address, "registry,stream")
    toml = fleet_laptop.work / "devbox.toml"
    toml.write_text(toml.read_text().replace(tb.BASE_IMAGE, f"local/absent{SUFFIX}:1"))
    done = fleet_laptop.devbox("up", *FLEET, "--no-verify")
    one_line_failure(done, fleet, f"registry {registry.address}/devbox lacks devbox-ssh:", "cannot build it")
