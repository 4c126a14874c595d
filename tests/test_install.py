"""Installed as users install it (a wheel, not the checkout): the image context and the
playbooks travel inside the package, and the content tag does not depend on where they lie."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import testbed as tb
from devbox.image import CONTEXT_DIR, ImageSpec, content_tag, context_tar

pytest_plugins = ("laptops",)  # the real_laptop fixture

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of the working tree, built from a copy (the checkout gets no build/ dir)."""
    root = tmp_path_factory.mktemp("wheel")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    source = root / "src"
    for name in files:
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((REPO / name).read_bytes())
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(root / "dist"), str(source)],
                   check=True, capture_output=True)
    return next((root / "dist").glob("devbox-*.whl"))


def test_wheel_carries_exactly_the_image_context_and_the_playbooks(wheel, tmp_path):
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(n.removeprefix("devbox/images/ssh/") for n in names if n.startswith("devbox/images/ssh/"))
    assert shipped == sorted(p.relative_to(CONTEXT_DIR).as_posix() for p in CONTEXT_DIR.rglob("*") if p.is_file())
    playbooks = sorted(n.removeprefix("devbox/playbooks/") for n in names if n.startswith("devbox/playbooks/"))
    assert playbooks == sorted(p.name for p in (REPO / "playbooks").glob("*.toml"))
    zipfile.ZipFile(wheel).extractall(tmp_path)
    (tmp_path / "devbox" / "images" / "ssh" / "Dockerfile").chmod(0o600)   # another umask, same layers
    spec, context = ImageSpec(tb.BASE_IMAGE), tmp_path / "devbox" / "images" / "ssh"
    assert content_tag(spec, context) == content_tag(spec)
    assert context_tar(context) == context_tar()


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv (nothing from the repo's venv) with only the wheel and its dependencies."""
    venv = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "-q", str(wheel)], check=True, capture_output=True)
    return venv


def test_installed_wheel_builds_ups_and_reports_status_outside_the_checkout(laptop, installed):
    def devbox(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([installed / "bin" / "devbox", *args], cwd=laptop.work, env=laptop.devbox.env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"devbox {' '.join(args)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done

    where = subprocess.run([installed / "bin" / "python", "-c", "import devbox.image as i; print(i.CONTEXT_DIR)"],
                           cwd=laptop.work, env=laptop.devbox.env, capture_output=True, text=True, check=True)
    assert where.stdout.strip().startswith(str(installed)), "the installed devbox must not read the checkout"
    assert not laptop.work.is_relative_to(REPO)
    built = json.loads(devbox("build", "--base", tb.BASE_IMAGE, "--json").stdout)
    assert built["tag"] == content_tag(ImageSpec(tb.BASE_IMAGE)), "same tag from the wheel as from the checkout"
    up = json.loads(devbox("up", laptop.host1, "--json").stdout)
    assert up[0]["error"] == "" and {c["status"] for c in up[0]["checks"]} <= {"ok", "skipped"}
    status = json.loads(devbox("status", laptop.host1, "--json").stdout)
    assert status[0]["state"] == "running", status
    assert laptop.ssh(f"devbox-{laptop.host1}", "whoami").stdout.strip() == "dev"


def test_installed_devbox_on_a_real_laptop_gets_into_direct_bastion_and_proxycommand_hosts(separate_laptop, real_laptop, installed):
    """Issue 16 end to end: devbox from the wheel, a laptop that reaches hosts with an ops key
    while keys/ holds its personal key, hosts that are really separate (a bastion is the only
    way in, or a ProxyCommand is); `up` works first time and OpenSSH gets into each box."""
    laptop = real_laptop

    def devbox(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([installed / "bin" / "devbox", *args], cwd=laptop.work, env=laptop.devbox.env,
                              capture_output=True, text=True, timeout=300)

    for host in (laptop.host1, laptop.inner_jump, laptop.inner_cmd):
        done = devbox("up", host, "--json")
        assert done.returncode == 0, f"{host}: {done.stdout}\n{done.stderr}"
        report = json.loads(done.stdout)[0]
        assert {c["status"] for c in report["checks"]} <= {"ok", "skipped"}, report["checks"]
        assert laptop.ssh(f"devbox-{host}", "whoami").stdout.strip() == "dev", host
    inner = laptop.engine.docker("ps", "--format", "{{.Names}}").stdout.split()
    assert f"devbox-{laptop.inner_jump}" in inner and f"devbox-{laptop.inner_cmd}" in inner, "the boxes run on the inner host"
    # No key of this laptop is among the box's keys: refused before the host is touched.
    (laptop.work / "keys" / "me.pub").unlink()
    stranger = tb.keygen(laptop.work / "stranger_ed25519", "stranger")
    assert devbox("keys", "add", "stranger", f"{stranger}.pub").returncode == 0
    done = devbox("up", laptop.host2)
    assert done.returncode == 2 and "keys add" in done.stderr + done.stdout, done.stderr
    made = subprocess.run(["docker", "ps", "-a", "-q", "--filter", f"label=devbox.host={laptop.host2}"], capture_output=True, text=True)
    assert made.stdout.strip() == ""
