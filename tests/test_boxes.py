"""A box per person on one shared host (issue 20): named boxes, who gets in, what a teammate
can reach from his own box, shared volumes; on the real bed (real sshd, real dockerd)."""
from __future__ import annotations

import json
import subprocess

import pytest

import testbed as tb
from conftest import SUFFIX
from test_keys_live import person_config, ssh_as

ALICE, BOB = f"alice{SUFFIX}", f"bob{SUFFIX}"


def inspect(name: str) -> dict:
    done = subprocess.run(["docker", "inspect", name], capture_output=True, text=True)
    return json.loads(done.stdout)[0] if done.returncode == 0 else {}


@pytest.fixture
def people(laptop, tmp_path):
    """keys/: me (the laptop's key, an admin), alice and bob; a box each on host1."""
    keys = {name: tb.keygen(tmp_path / f"{name}_ed25519", name) for name in ("alice", "bob")}
    for name, key in (("me", laptop.identity), *keys.items()):
        done = laptop.devbox("keys", "add", name, f"{key}.pub")
        assert done.returncode == 0, done.stderr
    toml = laptop.work / "devbox.toml"
    toml.write_text('admins = ["me"]\n' + toml.read_text() +
                    f'\n[boxes.{ALICE}]\nhost = "{laptop.host1}"\nowner = "alice"\n'
                    f'volumes = ["workspace:/workspace", "shared:cache{SUFFIX}:/home/dev/.cache/shared"]\n'
                    f'\n[boxes.{BOB}]\nhost = "{laptop.host1}"\nowner = "bob"\n'
                    f'volumes = ["workspace:/workspace", "shared:cache{SUFFIX}:/home/dev/.cache/shared"]\n')
    reports, _ = laptop.devbox.json("up", ALICE, BOB)
    assert [r["error"] for r in reports] == ["", ""], reports
    assert {c["status"] for r in reports for c in r["checks"]} <= {"ok", "skipped"}, reports
    return keys


def test_each_named_box_has_its_own_names_and_admits_its_owner_and_the_admins_only(laptop, people):
    alice, bob = person_config(laptop, ALICE, people["alice"]), person_config(laptop, BOB, people["bob"])
    assert ssh_as(alice, ALICE, "whoami").stdout.strip() == "dev"
    assert ssh_as(bob, BOB, "whoami").stdout.strip() == "dev"
    bob_at_alice = person_config(laptop, ALICE, people["bob"])
    refused = ssh_as(bob_at_alice, ALICE, "true")
    assert refused.returncode == 255 and "Permission denied" in refused.stderr
    assert laptop.ssh(f"devbox-{ALICE}", "true").returncode == 0, "an admin gets into every box"
    boxes = {name: inspect(f"devbox-{name}") for name in (ALICE, BOB)}
    assert {b["Config"]["Labels"]["devbox.owner"] for b in boxes.values()} == {"alice", "bob"}
    assert {b["Config"]["Labels"]["devbox.host"] for b in boxes.values()} == {laptop.host1}
    mounts = {name: {m.get("Name") for m in b["Mounts"]} for name, b in boxes.items()}
    assert {f"devbox-{ALICE}-home", f"devbox-{ALICE}-workspace", f"devbox-{ALICE}.keys"} <= mounts[ALICE]
    assert not mounts[ALICE] & mounts[BOB] - {f"devbox-shared-cache{SUFFIX}"}, "only the shared volume is common"
    entries = (laptop.home / ".ssh" / "devbox" / "config").read_text()
    assert f"Host devbox-{ALICE}\n" in entries and f"ProxyJump {laptop.host1}\n" in entries


def test_status_of_the_host_lists_every_box_with_its_owner(laptop, people):
    rows, _ = laptop.devbox.json("status", laptop.host1)
    by_name = {r["host"]: r for r in rows}
    assert by_name[laptop.host1]["state"] == "absent"
    assert by_name[ALICE]["owner"] == "alice" and by_name[ALICE]["state"] == "running"
    assert by_name[BOB]["owner"] == "bob" and by_name[BOB]["box_host"] == laptop.host1
    text = laptop.devbox("status", laptop.host1).stdout
    assert text.splitlines()[0].startswith("BOX") and any(line.startswith(ALICE) and " alice " in line for line in text.splitlines())
    one, _ = laptop.devbox.json("status", ALICE)
    assert [r["host"] for r in one] == [ALICE] and one[0]["keys"] == 2     # alice and the admin


def test_nothing_bob_does_in_his_box_reaches_alices(laptop, people):
    """Network, processes, /tmp, volumes and the keys volume: each box is its own."""
    bob = person_config(laptop, BOB, people["bob"])
    alice = person_config(laptop, ALICE, people["alice"])
    assert ssh_as(alice, ALICE, "echo secret > /tmp/alice-note; echo mine > /workspace/alice-file").returncode == 0
    alice_box = inspect(f"devbox-{ALICE}")
    alice_ip = next(iter(alice_box["NetworkSettings"]["Networks"].values()))["IPAddress"]
    gateway = next(iter(inspect(f"devbox-{BOB}")["NetworkSettings"]["Networks"].values()))["Gateway"]
    port = alice_box["Config"]["Labels"]["devbox.port"]
    probe = ("for t in {ip}:2222 {gw}:{port} 127.0.0.1:{port}; do "
             "if timeout 3 bash -c \"exec 3<>/dev/tcp/${{t%:*}}/${{t#*:}}\" 2>/dev/null; then echo open $t; else echo closed $t; fi; done")
    reach = ssh_as(bob, BOB, probe.format(ip=alice_ip, gw=gateway, port=port))
    assert reach.stdout.count("closed") == 3, reach.stdout + reach.stderr
    looks = ssh_as(bob, BOB, "cat /tmp/alice-note; ls /workspace; ls /etc/devbox/keys; ps -eo args")
    assert "secret" not in looks.stdout and "alice-file" not in looks.stdout
    assert "alice" not in subprocess.run(["docker", "exec", f"devbox-{BOB}", "cat", "/etc/devbox/keys/authorized_keys"],
                                         capture_output=True, text=True).stdout
    write_keys = ssh_as(bob, BOB, "echo x >> /etc/devbox/keys/authorized_keys")
    assert write_keys.returncode != 0, "the keys volume is read-only in the box"


def test_a_shared_volume_is_one_for_both_boxes_and_purging_one_box_keeps_it(laptop, people):
    alice, bob = person_config(laptop, ALICE, people["alice"]), person_config(laptop, BOB, people["bob"])
    assert ssh_as(alice, ALICE, "echo weights > ~/.cache/shared/model && ls -ld ~/.cache").returncode == 0
    assert ssh_as(bob, BOB, "cat ~/.cache/shared/model").stdout.strip() == "weights"
    assert ssh_as(bob, BOB, "touch ~/.cache/mine").returncode == 0, "~/.cache stays the user's"
    down, _ = laptop.devbox.json("down", ALICE, "--purge", "--yes")
    assert f"volume devbox-{ALICE}-workspace" in down[0]["removed"] if isinstance(down, list) else down["removed"]
    volumes = subprocess.run(["docker", "volume", "ls", "-q"], capture_output=True, text=True).stdout.split()
    assert f"devbox-shared-cache{SUFFIX}" in volumes and f"devbox-{ALICE}-workspace" not in volumes
    assert f"devbox-{BOB}-workspace" in volumes and inspect(f"devbox-{BOB}")["State"]["Running"]


def test_a_teammates_revocation_reaches_every_box_that_admitted_her(laptop, people):
    toml = laptop.work / "devbox.toml"
    toml.write_text(toml.read_text().replace('admins = ["me"]', 'admins = ["me", "alice"]'))
    assert laptop.devbox.json("keys", "sync", ALICE, BOB)[0][1]["changed"]
    alice_at_bob = person_config(laptop, BOB, people["alice"])
    assert ssh_as(alice_at_bob, BOB, "true").returncode == 0
    assert laptop.devbox("keys", "revoke", "alice").returncode == 0
    synced, _ = laptop.devbox.json("keys", "sync", ALICE, BOB)
    assert [r["error"] for r in synced] == ["", ""]
    assert ssh_as(alice_at_bob, BOB, "true").returncode == 255
    assert ssh_as(person_config(laptop, ALICE, people["alice"]), ALICE, "true").returncode == 255
    assert laptop.ssh(f"devbox-{ALICE}", "true").returncode == 0, "the admin still gets in"


@pytest.mark.parametrize("table, needle", [
    ('[boxes.BOX]\nhost = "HOST1"\n', "'owner' must be"),
    ('[boxes.BOX]\nowner = "alice"\n', "'host' must be"),
    ('[boxes.BOX]\nhost = "HOST1"\nowner = "../x"\n', "bad value for 'owner'"),
    ('[boxes.HOST1]\nhost = "HOST2"\nowner = "alice"\n', "is also a host name"),
    ('[boxes.BOX]\nhost = "HOST1"\nowner = "alice"\ngpus = 65\n', "a count is 1..64"),
    ('[boxes.BOX]\nhost = "HOST1"\nowner = "alice"\nvolumes = ["shared:/etc:/x"]\n', "shared: names a volume"),
    ('admins = "me"\n[boxes.BOX]\nhost = "HOST1"\nowner = "alice"\n', "bad value for 'admins'"),
    ('[boxes.BOX]\nhost = "HOST1"\nowner = "nobody"\n', "has a key in"),
])
def test_bad_box_tables_are_one_line_and_exit_2_touching_nothing(laptop, table, needle):
    for name in ("me", "alice"):
        laptop.devbox("keys", "add", name, str(laptop.identity if name == "me" else tb.keygen(laptop.work / "a", "alice")) + ".pub")
    text = table.replace("BOX", ALICE).replace("HOST1", laptop.host1).replace("HOST2", laptop.host2)
    (laptop.work / "devbox.toml").write_text(text)
    name = laptop.host1 if "boxes.HOST1" in table else ALICE
    done = laptop.devbox("up", name, "--dry-run")
    assert done.returncode == 2, done.stdout + done.stderr
    message = (done.stdout + done.stderr).strip()
    assert needle in message and "Traceback" not in message and len(message.splitlines()) == 1, message
    assert not inspect(f"devbox-{ALICE}")


# ---------------------------------------------------------------- issue 23.1: a revocation lost to a race


def _engine_lock_path() -> str:
    from devbox.lock import ENGINE_LOCK

    env = {k: v for k, v in __import__("os").environ.items() if k != "DOCKER_HOST"}   # the bed's hosts use the main engine
    return subprocess.run(["sh", "-c", f'echo "{ENGINE_LOCK}"'], capture_output=True, text=True, env=env).stdout.strip()


def _wait_for(stream_path, text: str, timeout: float = 60) -> None:
    import time

    deadline = time.monotonic() + timeout
    while text not in stream_path.read_text():
        assert time.monotonic() < deadline, f"never saw {text!r}: {stream_path.read_text()}"
        time.sleep(0.2)


def _wait_for_either(process, stream_path, text: str, timeout: float = 120) -> None:
    """Until `process` ended or wrote `text`."""
    import time

    deadline = time.monotonic() + timeout
    while process.poll() is None and text not in stream_path.read_text():
        assert time.monotonic() < deadline, f"neither ended nor said {text!r}"
        time.sleep(0.2)


def test_a_key_revoked_and_synced_while_up_waits_to_write_keys_stays_revoked(laptop, tmp_path):
    """`up` plans with mallory's key, then waits (the test holds the host's lock, as a long
    `up` of another box would); meanwhile mallory is revoked and synced. Once both ran, mallory
    is out: sync waited for `up`, and `up` wrote keys/ as it was when it wrote (issue 23.1)."""
    mallory = tb.keygen(tmp_path / "mallory_ed25519", "mallory")
    for name, key in (("me", laptop.identity), ("mallory", mallory)):
        assert laptop.devbox("keys", "add", name, f"{key}.pub").returncode == 0
    assert laptop.devbox.json("up", laptop.host1)[0][0]["error"] == ""
    as_mallory = person_config(laptop, laptop.host1, mallory)
    assert ssh_as(as_mallory, laptop.host1, "true").returncode == 0
    toml = laptop.work / "devbox.toml"
    toml.write_text(toml.read_text() + 'shm_size = "1g"\n')                 # a change: `up` re-creates the box
    # the engine lock, and the per-box lock older devbox versions took (so the test holds `up` on either)
    paths = [_engine_lock_path(), f"/tmp/devbox-devbox-{laptop.host1}.lock"]
    holder = subprocess.Popen(["sh", "-c", " ".join(f"flock {p}" for p in paths) + " sh -c 'echo held; exec cat'"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        up_err = tmp_path / "up.err"
        up = subprocess.Popen([*laptop.devbox.argv, "up", laptop.host1], cwd=laptop.work, env=laptop.devbox.env,
                              stdout=subprocess.PIPE, stderr=up_err.open("w"), text=True)
        _wait_for(up_err, "waiting for it")
        assert laptop.devbox("keys", "revoke", "mallory").returncode == 0
        sync_err = tmp_path / "sync.err"
        sync = subprocess.Popen([*laptop.devbox.argv, "keys", "sync", laptop.host1], cwd=laptop.work, env=laptop.devbox.env,
                                stdout=subprocess.PIPE, stderr=sync_err.open("w"), text=True)
        # The sync either waits for the lock too or (a devbox without it) has already written its keys.
        _wait_for_either(sync, sync_err, "waiting for it")
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert up.wait(timeout=600) == 0, up.stdout.read() + up_err.read_text()
    assert sync.wait(timeout=600) == 0, sync.stdout.read() + sync_err.read_text()
    refused = ssh_as(as_mallory, laptop.host1, "true")
    assert refused.returncode == 255 and "Permission denied" in refused.stderr
    assert laptop.ssh(f"devbox-{laptop.host1}", "true").returncode == 0


def test_a_config_that_names_another_owner_for_a_box_touches_nothing(laptop, people):
    """A copied table or a typo (`owner = "bob"` for alice's box) would give her data to bob's keys."""
    toml = laptop.work / "devbox.toml"
    toml.write_text(toml.read_text().replace(f'[boxes.{ALICE}]\nhost = "{laptop.host1}"\nowner = "alice"',
                                             f'[boxes.{ALICE}]\nhost = "{laptop.host1}"\nowner = "bob"'))
    before = inspect(f"devbox-{ALICE}")["Id"]
    for args in (("up", ALICE), ("keys", "sync", ALICE)):
        done = laptop.devbox(*args)
        assert done.returncode == 2 and "is alice's (its label), the config says owner = 'bob'" in done.stdout, done.stdout
    assert inspect(f"devbox-{ALICE}")["Id"] == before
    keys = subprocess.run(["docker", "exec", f"devbox-{ALICE}", "cat", "/etc/devbox/keys/authorized_keys"],
                          capture_output=True, text=True).stdout
    assert " bob" not in keys and " alice" in keys
