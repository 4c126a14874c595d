"""Issue 23, items 4, 5, 6 and 9 on the real test bed: every named volume is the box user's,
revocation lists the start-up files changed in a shared home, a failing build says which step
failed and how, a build that stalls on an unreachable mirror ends (or streams instead), and a
team's CA reaches the build."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import testbed as tb


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
