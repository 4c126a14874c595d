"""The bench's test bed: N fake hosts (real sshd on 127.0.0.(10+i)), one laptop HOME,
project folders with devbox.toml, the helper venvs (Ansible; a target-side Python with
the docker SDK), and the clean-up of every container, volume and image the bench made.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
import testbed as tb  # noqa: E402  (tests/testbed.py re-exports devbox/testbed.py)

BENCH = Path(__file__).resolve().parent
ANSIBLE_VENV = BENCH / ".venv-ansible"   # ansible (bundles community.docker) + pyinstrument
TARGET_VENV = BENCH / ".venv-target"     # docker SDK for Ansible's module, on the "host" side
SUFFIX = "-bench"
HEAVY_BASE = "local/bench-base:heavy"
DEVBOX = Path(sys.executable).parent / "devbox"   # the venv's console script


def host_name(i: int) -> str:
    return f"gpu-host-{i}{SUFFIX}"


def sh(*argv: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    done = subprocess.run(list(argv), **kw)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {(done.stderr or '')[-800:]}")
    return done


def ensure_helper_venvs(log=print) -> bool:
    """Create the Ansible venv and the target venv once (PyPI); False if that fails.

    The target venv is made from /usr/bin/python3 because the fake hosts' SSH user
    cannot read root's pyenv interpreter (the one behind this venv)."""
    try:
        if not (ANSIBLE_VENV / "bin" / "ansible-playbook").exists():
            log("  … installing ansible + pyinstrument into bench/.venv-ansible (once)")
            sh(sys.executable, "-m", "venv", str(ANSIBLE_VENV))
            sh(str(ANSIBLE_VENV / "bin" / "pip"), "install", "-q", "ansible", "pyinstrument")
        if not (TARGET_VENV / "bin" / "python").exists() or sh(str(TARGET_VENV / "bin" / "python"), "-c", "import docker", check=False).returncode:
            log("  … making bench/.venv-target (system python3 + docker SDK, once)")
            sh("/usr/bin/python3", "-m", "venv", str(TARGET_VENV))
            sh(str(TARGET_VENV / "bin" / "pip"), "install", "-q", "docker")
        return True
    except (RuntimeError, OSError) as exc:
        log(f"  ! helper venvs unavailable, Ansible comparison skipped: {exc}")
        return False


@dataclass
class Bed:
    workdir: Path
    hosts: list[str]
    testbed: object
    laptop: object
    project: Path
    env: dict
    made_images: set[str] = field(default_factory=set)

    @property
    def ssh_config(self) -> Path:
        return self.laptop.ssh_config

    def project_dir(self, name: str, toml: str) -> Path:
        path = self.workdir / name
        (path / "keys").mkdir(parents=True, exist_ok=True)
        (path / "devbox.toml").write_text(toml)
        return path

    def devbox(self, *args: str, cwd: Path | None = None, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
        """The venv's `devbox` console script, as the user runs it."""
        done = subprocess.run([str(DEVBOX), *args], cwd=cwd or self.project, env=self.env, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and done.returncode != 0:
            raise RuntimeError(f"devbox {' '.join(args)} exited {done.returncode}\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}")
        return done

    def ssh(self, host: str, *command: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ssh", "-F", str(self.ssh_config), "-o", "BatchMode=yes", host, *command],
                              capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)

    def sshd_connections(self, host: str) -> int:
        """TCP connections the fake host's sshd has accepted so far (LogLevel VERBOSE)."""
        log = self.workdir / host / "sshd.log"
        return log.read_text(errors="replace").count("Connection from ")

    def stop(self) -> None:
        remove_boxes(self.hosts)
        for image in sorted(self.made_images):
            subprocess.run(["docker", "rmi", "-f", image], capture_output=True)
        remove_heavy_images()
        self.testbed.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def remove_heavy_images() -> None:
    """Every image on the heavy base, intermediates of failed builds included: they all
    inherit its label. Children go before parents, so a few passes."""
    for _ in range(6):
        ids = sh("docker", "images", "-aq", "--filter", "label=devbox.bench=heavy-base", check=False).stdout.split()
        if not ids:
            return
        sh("docker", "rmi", "-f", *dict.fromkeys(ids), check=False)


def remove_boxes(hosts) -> None:
    """Delete the containers, networks and volumes devbox made for these hosts (by label, ours only)."""
    for host in hosts:
        ids = sh("docker", "ps", "-aq", "--filter", f"label=devbox.host={host}", check=False).stdout.split()
        if ids:
            sh("docker", "rm", "-f", *ids, check=False)
        nets = sh("docker", "network", "ls", "-q", "--filter", f"label=devbox.host={host}", check=False).stdout.split()
        if nets:
            sh("docker", "network", "rm", *nets, check=False)
        vols = sh("docker", "volume", "ls", "-q", "--filter", f"label=devbox.host={host}", check=False).stdout.split()
        if vols:
            sh("docker", "volume", "rm", "-f", *vols, check=False)


def start(n_hosts: int, log=print) -> Bed:
    reason = tb.testbed_unavailable_reason()
    if reason:
        raise SystemExit(f"bench needs the real test bed: {reason}")
    # sshd StrictModes refuses authorized_keys under /tmp (1777): the bed lives in /var/lib.
    workdir = Path(tempfile.mkdtemp(prefix="devbox-bench-", dir="/var/lib"))
    hosts = [host_name(i) for i in range(1, n_hosts + 1)]
    remove_boxes(hosts)
    log(f"  … starting {n_hosts} fake hosts (sshd on 127.0.0.10..{9 + n_hosts}) in {workdir}")
    bed_ = tb.start_testbed(workdir, hosts)
    laptop = tb.make_laptop(workdir / "home", bed_)
    env = {**os.environ, "HOME": str(laptop.home), "PYTHONUNBUFFERED": "1"}
    env.pop("DEVBOX_SSH_CONFIG", None)
    bed = Bed(workdir, hosts, bed_, laptop, Path(), env)
    bed.project = bed.project_dir("project", f'[defaults]\nplaybook = "cpu"\nbase_image = "{tb.BASE_IMAGE}"\n')
    return bed
