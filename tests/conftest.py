"""Session fixtures: the real test bed (fake hosts = real sshd, real dockerd) and a laptop.

Tests that need root, sshd or Docker skip with the reason when they cannot run; under
CI (CI=true or DEVBOX_REQUIRE_TESTBED=1) they fail instead, so CI proves none skipped.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import testbed as tb  # noqa: E402

# A per-run suffix keeps this run out of every box it did not make: box and volume
# names derive from the host alias, so an engine that already runs a real
# `devbox-gpu-host-1` (or another developer's test run) is never touched.
SUFFIX = os.environ.get("DEVBOX_TEST_SUFFIX") or "-t" + secrets.token_hex(3)
HOST1, HOST2, NODOCKER = f"gpu-host-1{SUFFIX}", f"gpu-host-2{SUFFIX}", f"nodocker-host{SUFFIX}"
NORUNTIME = f"gpu-noruntime{SUFFIX}"
HOSTS = [HOST1, HOST2, NODOCKER, NORUNTIME]
REPO = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config, items):
    """`slow` tests (multi-GB deliveries, minutes each) run only when asked for: `-m slow`
    or DEVBOX_SLOW=1 (`make bench` does both); never in CI's default run."""
    if os.environ.get("DEVBOX_SLOW") == "1" or "slow" in (config.getoption("markexpr") or ""):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


def _require(reason: str | None) -> None:
    if reason:
        if os.environ.get("CI") or os.environ.get("DEVBOX_REQUIRE_TESTBED"):
            pytest.fail(f"test bed required here but unavailable: {reason}")
        pytest.skip(f"needs the real test bed: {reason}")


def _require_testbed() -> None:
    _require(tb.testbed_unavailable_reason())


@pytest.fixture(params=tb.UBUNTU_BASES)
def ubuntu_base(request, testbed) -> str:
    """Each Ubuntu base the real pytorch images are built on (local stand-ins)."""
    missing = subprocess.run(["docker", "image", "inspect", request.param], capture_output=True).returncode != 0
    _require(f"{request.param} missing: run scripts/ubuntu-bases.sh (make test does)" if missing else None)
    return request.param


@pytest.fixture(scope="session")
def testbed():
    _require_testbed()
    # sshd (StrictModes) wants every directory above authorized_keys root-owned and
    # not world-writable: not pytest's 0700 tmp, not /tmp (1777).
    workdir = Path(tempfile.mkdtemp(prefix="devbox-testbed-", dir="/var/lib"))
    bed = tb.start_testbed(workdir, HOSTS)
    yield bed
    bed.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def engine_host(testbed):
    """A fake host backed by its own Docker engine that has only the base image."""
    # its own address pool: bridges other engines left on this machine may fill Docker's defaults
    engine = tb.start_second_engine(Path(tempfile.mkdtemp(prefix="devbox-engine-", dir="/var/lib")), [tb.BASE_IMAGE],
                                    address_pool="10.149.0.0/16")
    host = tb.start_engine_host(f"gpu-engine{SUFFIX}", testbed.workdir, testbed.workdir / "authorized_keys", engine)
    yield host, engine
    host.stop()
    engine.stop()


def add_host(laptop: tb.Laptop, host: tb.FakeHost) -> None:
    """Put one more host in the laptop's ssh config and known_hosts."""
    known = laptop.home / ".ssh" / "known_hosts"
    known.write_text(known.read_text() + host.host_key_line() + "\n")
    laptop.ssh_config.write_text(laptop.ssh_config.read_text() + host.config_block(laptop.identity, known))


@pytest.fixture
def engine_laptop(laptop, testbed, engine_host):
    """The laptop, with the own-engine host added to its ssh config and known_hosts."""
    host, engine = engine_host
    add_host(laptop, host)
    laptop.engine_host, laptop.engine = host.name, engine
    yield laptop


GPU8 = f"gpu8-host{SUFFIX}"


@pytest.fixture(scope="session")
def gpu8_host(testbed, box_image):
    """A host with 8 GPUs to share (devbox/testbed.py, "A host with GPUs to share"): its
    own dockerd, where `--gpus` works and each box gets a fake nvidia-smi of its GPUs,
    seeded with the base and the box image. A tb.GpuBed: .name (the ssh alias), .host,
    .engine, .gpus, .set_util(index, pct), .set_processes(index, [(pid, mib, name)]),
    .set_box_util(container, index, pct), .visible_devices(container), .smi(*args),
    .box_smi(container, *args), .reset(). Use it through `gpu8_laptop`."""
    root = Path(tempfile.mkdtemp(prefix="devbox-gpu8-", dir="/var/lib"))
    bed = tb.start_gpu_bed(root, [tb.BASE_IMAGE, box_image.tag])
    try:
        tb.start_gpu_host(GPU8, testbed.workdir, testbed.workdir / "authorized_keys", bed)
        yield bed
    finally:
        bed.stop()


@pytest.fixture
def gpu8_laptop(laptop, gpu8_host):
    """The laptop with the 8-GPU host in its ssh config (laptop.gpu8 is its name, laptop.gpus
    the bed); the host starts and ends each test with no box and every GPU idle."""
    add_host(laptop, gpu8_host.host)
    laptop.gpu8, laptop.gpus = gpu8_host.name, gpu8_host
    gpu8_host.reset()
    yield laptop
    gpu8_host.reset()


@pytest.fixture(scope="session")
def box_image(testbed):
    """The devbox image built on the local base (what `devbox build --base` makes)."""
    from devbox.image import ImageSpec, build_locally

    return build_locally(ImageSpec(tb.BASE_IMAGE))


def remove_boxes(hosts) -> None:
    """Delete the containers and volumes devbox made for these hosts (by id, ours only)."""
    for host in hosts:
        ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=devbox.host={host}"], capture_output=True, text=True).stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
        nets = subprocess.run(["docker", "network", "ls", "-q", "--filter", f"label=devbox.host={host}"], capture_output=True, text=True).stdout.split()
        if nets:
            subprocess.run(["docker", "network", "rm", *nets], capture_output=True)
        vols = subprocess.run(["docker", "volume", "ls", "-q", "--filter", f"label=devbox.host={host}"], capture_output=True, text=True).stdout.split()
        if vols:
            subprocess.run(["docker", "volume", "rm", "-f", *vols], capture_output=True)


class DevboxCLI:
    """Runs the real `devbox` command as the user would, on the laptop."""

    def __init__(self, laptop: tb.Laptop, cwd: Path):
        self.laptop, self.cwd = laptop, cwd
        self.env = {**os.environ, "HOME": str(laptop.home), "PYTHONUNBUFFERED": "1"}
        self.env.pop("DEVBOX_SSH_CONFIG", None)

    argv = [sys.executable, "-m", "devbox.cli"]

    def __call__(self, *args: str, input: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([*self.argv, *args], cwd=self.cwd, env=self.env,
                              capture_output=True, text=True, input=input, timeout=timeout)

    def json(self, *args: str, expect: int | None = 0):
        done = self(*args, "--json")
        if expect is not None:
            assert done.returncode == expect, f"exit {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}"
        return json.loads(done.stdout), done


@pytest.fixture
def laptop(testbed, box_image, tmp_path, monkeypatch):
    """A fresh laptop HOME with the test hosts in ~/.ssh/config and a cpu devbox.toml."""
    home = tmp_path / "home"
    laptop = tb.make_laptop(home, testbed)
    work = tmp_path / "project"
    (work / "keys").mkdir(parents=True)
    (work / "devbox.toml").write_text(f'[defaults]\nplaybook = "cpu"\nbase_image = "{tb.BASE_IMAGE}"\n')
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    laptop.work = work
    laptop.host1, laptop.host2, laptop.nodocker, laptop.noruntime = HOST1, HOST2, NODOCKER, NORUNTIME
    laptop.devbox = DevboxCLI(laptop, work)
    remove_boxes(HOSTS)
    yield laptop
    remove_boxes(HOSTS)


# ---------------------------------------------------------------- hosts that are really separate

BASTION, INNER_JUMP, INNER_CMD = f"bastion{SUFFIX}", f"inner-jump{SUFFIX}", f"inner-cmd{SUFFIX}"
INNER_DIRECT, INNER_CHAIN = f"inner-direct{SUFFIX}", f"inner-chain{SUFFIX}"


@pytest.fixture(scope="session")
def separate_bed(testbed):
    """laptop -> bastion -> inner (own sshd and dockerd), each in a network namespace of its
    own (devbox/testbed.py draws it); one per session: a namespaced dockerd takes seconds."""
    import hashlib

    _require(None if shutil.which("nsenter") and tb.have("ip") else "needs `ip` (iproute2) and `nsenter` (util-linux)")
    tag = hashlib.sha1(SUFFIX.encode()).hexdigest()[:6]  # interface names hold 15 characters
    bed = tb.start_separate_bed(testbed.workdir / "separate", testbed.workdir / "authorized_keys", tag, [tb.BASE_IMAGE])
    yield bed
    bed.stop()


@pytest.fixture
def separate_laptop(laptop, separate_bed):
    """The laptop with the separate hosts in ~/.ssh/config and known_hosts: the bastion, the
    inner host through it (`inner-jump`), through a ProxyCommand only (`inner-cmd`), with no
    route at all (`inner-direct`), and through the two-hop chain bastion,inner-direct."""
    bed = separate_bed
    bastion, inner = bed.hosts["bastion"], bed.hosts["inner"]
    known = laptop.home / ".ssh" / "known_hosts"
    known.write_text(known.read_text() + bastion.host_key_line() + "\n" + inner.host_key_line() + "\n")
    blocks = [bastion.config_block(laptop.identity, known, BASTION),
              inner.config_block(laptop.identity, known, INNER_JUMP, f"ProxyJump {BASTION}"),
              inner.config_block(laptop.identity, known, INNER_CMD, bed.proxy_command()),
              inner.config_block(laptop.identity, known, INNER_DIRECT),
              inner.config_block(laptop.identity, known, INNER_CHAIN, f"ProxyJump {BASTION},{INNER_DIRECT}")]
    laptop.ssh_config.write_text(laptop.ssh_config.read_text() + "".join(blocks))
    # The inner host has no way out (no apt for a build there): the image crosses SSH.
    toml = laptop.work / "devbox.toml"
    toml.write_text(toml.read_text().replace("[defaults]\n", '[defaults]\ndelivery = "stream"\n', 1))
    laptop.bed, laptop.engine = bed, bed.engine
    laptop.bastion, laptop.inner_jump, laptop.inner_cmd = BASTION, INNER_JUMP, INNER_CMD
    laptop.inner_direct, laptop.inner_chain = INNER_DIRECT, INNER_CHAIN
    aliases = (INNER_JUMP, INNER_CMD, INNER_CHAIN)
    for alias in aliases:
        bed.engine.remove_containers(f"devbox.host={alias}")
    yield laptop
    for alias in aliases:
        bed.engine.remove_containers(f"devbox.host={alias}")


# ---------------------------------------------------------------- a Slurm cluster (issue 21)

HPC_LOGIN = f"hpc-login{SUFFIX}"


@pytest.fixture(scope="session")
def slurm_bed(testbed):
    """A real Slurm cluster (devbox/testbed_slurm.py draws it): a login node and two compute
    nodes with 4 fake H200s and a dockerd each, reachable only through the login. The node
    engines hold only the base image (devbox delivers its own). A SlurmBed: .login, .nodes
    (name -> Node: .address, .engine, .gpus, .sshd), .shared_dir, .slurm_conf,
    .slurm(*argv, user=...), .job(id), .wait_job(id, *states), .known_hosts_lines()."""
    import hashlib

    from devbox import testbed_slurm

    _require(testbed_slurm.slurm_unavailable_reason())
    tag = hashlib.sha1(f"slurm{SUFFIX}".encode()).hexdigest()[:6]  # interface names hold 15 characters
    bed = testbed_slurm.start_slurm_bed(testbed.workdir / "slurm", testbed.workdir / "authorized_keys", tag, [tb.BASE_IMAGE])
    yield bed
    bed.stop()


@pytest.fixture
def slurm_laptop(laptop, slurm_bed):
    """The laptop with the login node as `hpc-login-<suffix>` in ~/.ssh/config and the login's
    and nodes' host keys in known_hosts (laptop.hpc_login, laptop.slurm = the bed). Each test
    starts and ends with no job queued and no container on a node."""
    known = laptop.home / ".ssh" / "known_hosts"
    known.write_text(known.read_text() + slurm_bed.known_hosts_lines())
    laptop.ssh_config.write_text(laptop.ssh_config.read_text() + slurm_bed.ssh_config_block(laptop.identity, known, HPC_LOGIN))
    laptop.hpc_login, laptop.slurm = HPC_LOGIN, slurm_bed
    slurm_bed.reset()
    yield laptop
    slurm_bed.reset()
