"""Issue 13, item 7: messages that tell the truth (keys, jobs on a stopped box, down).

Keys are the laptop's own files: the real CLI on a temporary keys/ folder. Jobs and
`down` run against the real test bed (real sshd, real dockerd).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def devbox(*args, cwd: Path, home: Path):
    env = {**os.environ, "HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "devbox.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=60)


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True)
    return Path(str(path) + ".pub")


@pytest.fixture
def keys(tmp_path):
    (tmp_path / "keys").mkdir()
    return lambda *args: devbox("keys", *args, cwd=tmp_path, home=tmp_path)


def test_the_same_key_under_a_second_name_is_refused_naming_its_holder(keys, tmp_path):
    alice = keygen(tmp_path / "alice")
    assert keys("add", "alice", str(alice)).returncode == 0
    done = keys("add", "bob", str(alice))
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "already alice's" in done.stderr and "revoke alice" in done.stderr
    assert not (tmp_path / "keys" / "bob.pub").exists()
    assert keys("add", "alice", str(alice), "--replace").returncode == 0  # the holder may re-add it


def test_keys_list_marks_a_revoked_key_that_is_still_in_a_file(keys, tmp_path):
    """revoke bob, then his key comes back in a file (a git revert, a copy): list says REVOKED, sync skips it."""
    bob, carol = keygen(tmp_path / "bob"), keygen(tmp_path / "carol")
    assert keys("add", "bob", str(bob)).returncode == 0 and keys("add", "carol", str(carol)).returncode == 0
    assert keys("revoke", "bob").returncode == 0
    (tmp_path / "keys" / "bob.pub").write_text(bob.read_text())
    listed = keys("list").stdout.splitlines()
    assert [line for line in listed if line.startswith("bob")] and all("REVOKED" in l for l in listed if l.startswith("bob"))
    assert not any("REVOKED" in l for l in listed if l.startswith("carol"))
    rows = {r["name"]: r for r in json.loads(keys("list", "--json").stdout)}
    assert rows["bob"]["revoked"] is True and rows["carol"]["revoked"] is False


# ---------------------------------------------------------------- on the real test bed


def test_jobs_on_a_host_without_a_box_say_so_and_how_to_make_one(laptop):
    for args in (["ps", laptop.host1], ["logs", laptop.host1, "train"], ["stop", laptop.host1, "train"]):
        done = laptop.devbox(*args, timeout=60)
        assert done.returncode == 3, done.stderr
        assert done.stderr == f"devbox: error: no box on {laptop.host1} (run `devbox up {laptop.host1}`)\n", done.stderr


def test_jobs_on_a_stopped_box_say_it_is_stopped_not_what_docker_said(laptop):
    reports, _ = laptop.devbox.json("up", laptop.host1)
    assert reports[0]["error"] == ""
    subprocess.run(["docker", "stop", "-t", "1", f"devbox-{laptop.host1}"], check=True, capture_output=True)
    for args in (["ps", laptop.host1], ["logs", laptop.host1, "train"], ["logs", laptop.host1, "train", "-f"],
                 ["stop", laptop.host1, "train"], ["run", laptop.host1, "--name", "train", "--", "true"]):
        done = laptop.devbox(*args, timeout=60)
        assert done.returncode == 3, (args, done.stderr)
        assert done.stderr == f"devbox: error: the box on {laptop.host1} is stopped (run `devbox up {laptop.host1}`)\n", done.stderr
        assert "Error response from daemon" not in done.stderr


def _volumes(host: str) -> set[str]:
    names = subprocess.run(["docker", "volume", "ls", "-q", "--filter", f"label=devbox.host={host}"],
                           capture_output=True, text=True, check=True).stdout.split()
    return {f"volume {n}" for n in names}


def test_down_claims_to_keep_only_volumes_that_exist(laptop):
    """Never up: nothing to remove, nothing kept. After an up: the volumes really on the host."""
    report, done = laptop.devbox.json("down", laptop.host1)
    assert report["kept"] == [] and not [r for r in report["removed"] if r.startswith(("container", "volume"))], report
    assert "kept" not in laptop.devbox("down", laptop.host1).stdout

    laptop.devbox.json("up", laptop.host1)
    existing = _volumes(laptop.host1)
    assert existing
    report, _ = laptop.devbox.json("down", laptop.host1)
    kept_volumes = {k for k in report["kept"] if k.startswith("volume ")}
    secrets = f"volume devbox-{laptop.host1}.secrets"   # no box, no secrets on the host: removed
    assert kept_volumes == existing - {secrets} and secrets in existing and secrets in report["removed"], (report, existing)
    assert f"ssh entry devbox-{laptop.host1}" in report["kept"] and "pinned host key" in report["kept"]

    report, _ = laptop.devbox.json("down", laptop.host1, "--purge", "--yes")
    assert _volumes(laptop.host1) == set()
    report, _ = laptop.devbox.json("down", laptop.host1)
    assert report["kept"] == [], report
