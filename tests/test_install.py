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
