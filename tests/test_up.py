"""`devbox up / verify / status / down` end to end on the real test bed (gpus = "none")."""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

import testbed as tb


def container_id(name: str) -> str | None:
    done = subprocess.run(["docker", "inspect", "-f", "{{.Id}}", name], capture_output=True, text=True)
    return done.stdout.strip() or None


def volumes_of(host: str) -> list[str]:
    return subprocess.run(["docker", "volume", "ls", "-q", "--filter", f"label=devbox.host={host}"],
                          capture_output=True, text=True).stdout.split()


def set_config(laptop, extra: str = "", playbook: str = "cpu", base: str = tb.BASE_IMAGE) -> None:
    (laptop.work / "devbox.toml").write_text(f'[defaults]\nplaybook = "{playbook}"\nbase_image = "{base}"\n{extra}')


def box_ssh(laptop, host: str, *command: str):
    return laptop.ssh(f"devbox-{host}", *command)


def test_up_two_hosts_in_parallel_and_openssh_reaches_each_box_with_strict_checking(laptop):
    reports, done = laptop.devbox.json("up", laptop.host1, laptop.host2)
    assert [r["error"] for r in reports] == ["", ""]
    assert {c["status"] for r in reports for c in r["checks"]} <= {"ok", "skipped"}
    for host in (laptop.host1, laptop.host2):
        assert box_ssh(laptop, host, "whoami").stdout.strip() == "dev"
    entries = (laptop.home / ".ssh" / "devbox" / "config").read_text()
    assert f"Host devbox-{laptop.host1}" in entries and "StrictHostKeyChecking yes" in entries
    assert f"ProxyJump {laptop.host1}" in entries
    user_config = laptop.ssh_config.read_text()
    assert user_config.splitlines()[1] == f"Include {laptop.home}/.ssh/devbox/config"
    assert list((laptop.home / ".ssh").glob("config.devbox-backup-*")), "the user's config is backed up first"
    assert user_config.count("Include") == 1


def test_gpu_checks_are_skipped_not_ok_without_gpus(laptop):
    reports, _ = laptop.devbox.json("up", laptop.host1)
    statuses = {c["name"]: c["status"] for c in reports[0]["checks"]}
    assert statuses["nvidia-smi"] == statuses["torch cuda"] == statuses["cuda matmul"] == "skipped"
    for name in ("key login", "password refused", "root login refused", "keyboard-interactive refused",
                 "uid/gid", "no sudo", "tmux", "mount /workspace writable", "openssh client path", "no root process"):
        assert statuses[name] == "ok", name


def test_rerun_changes_nothing_and_keeps_container_and_tmux_session(laptop):
    laptop.devbox.json("up", laptop.host1)
    before = container_id(f"devbox-{laptop.host1}")
    assert box_ssh(laptop, laptop.host1, "tmux new-session -d -s keepme 'sleep 600'").returncode == 0
    reports, done = laptop.devbox.json("up", laptop.host1)
    assert reports[0]["changed"] is False and reports[0]["steps"] == []
    text = laptop.devbox("up", laptop.host1)
    assert "nothing changed" in text.stdout
    assert container_id(f"devbox-{laptop.host1}") == before
    assert box_ssh(laptop, laptop.host1, "tmux has-session -t =keepme && echo alive").stdout.strip() == "alive"


def test_spec_change_recreates_the_box_but_keeps_workspace_and_host_key(laptop):
    laptop.devbox.json("up", laptop.host1)
    before = container_id(f"devbox-{laptop.host1}")
    pinned = (laptop.home / ".ssh" / "devbox" / "known_hosts").read_text()
    assert box_ssh(laptop, laptop.host1, "echo precious > /workspace/keep.txt").returncode == 0
    set_config(laptop, 'shm_size = "1g"\n')
    reports, _ = laptop.devbox.json("up", laptop.host1)
    assert reports[0]["changed"] and any("re-create" in s for s in reports[0]["steps"])
    assert container_id(f"devbox-{laptop.host1}") != before
    assert (laptop.home / ".ssh" / "devbox" / "known_hosts").read_text() == pinned
    assert box_ssh(laptop, laptop.host1, "cat /workspace/keep.txt").stdout.strip() == "precious"


def test_down_keeps_data_and_up_brings_it_back(laptop):
    laptop.devbox.json("up", laptop.host1)
    box_ssh(laptop, laptop.host1, "echo still-here > /workspace/f.txt")
    report, _ = laptop.devbox.json("down", laptop.host1)
    assert container_id(f"devbox-{laptop.host1}") is None
    assert len(volumes_of(laptop.host1)) == 3 and sum("volume" in k for k in report["kept"]) == 3
    laptop.devbox.json("up", laptop.host1)
    assert box_ssh(laptop, laptop.host1, "cat /workspace/f.txt").stdout.strip() == "still-here"


def test_down_purge_needs_confirmation_then_removes_volumes_and_entry(laptop):
    laptop.devbox.json("up", laptop.host1)
    refused = laptop.devbox("down", laptop.host1, "--purge")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert container_id(f"devbox-{laptop.host1}") is not None
    laptop.devbox.json("down", laptop.host1, "--purge", "--yes")
    assert volumes_of(laptop.host1) == []
    assert f"devbox-{laptop.host1}" not in (laptop.home / ".ssh" / "devbox" / "config").read_text()


def test_dry_run_prints_the_steps_and_changes_nothing(laptop):
    done = laptop.devbox("up", laptop.host1, "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "would run" in done.stdout and "start box" in done.stdout
    assert container_id(f"devbox-{laptop.host1}") is None and volumes_of(laptop.host1) == []
    assert not (laptop.home / ".ssh" / "devbox").exists()


@pytest.mark.parametrize("which, needle", [
    ("unreachable", "cannot connect"),
    ("nodocker", "docker group"),
    ("noruntime", "nvidia-container-toolkit"),
])
def test_preflight_failures_exit_3_and_create_nothing(laptop, which, needle):
    host = {"unreachable": tb.UNREACHABLE, "nodocker": laptop.nodocker, "noruntime": laptop.noruntime}[which]
    set_config(laptop, playbook="default" if which == "noruntime" else "cpu",
               extra='volumes = ["workspace:/workspace"]\n' if which == "noruntime" else "")
    done = laptop.devbox("up", host)
    assert done.returncode == 3, done.stdout + done.stderr
    assert needle in done.stdout
    assert container_id(f"devbox-{host}") is None and volumes_of(host) == []
    assert not (laptop.home / ".ssh" / "devbox").exists()


def test_one_unreachable_host_does_not_stop_the_other(laptop):
    reports, done = laptop.devbox.json("up", laptop.host1, tb.UNREACHABLE, expect=3)
    by_host = {r["host"]: r for r in reports}
    assert by_host[laptop.host1]["error"] == "" and by_host[laptop.host1]["exit_code"] == 0
    assert by_host[tb.UNREACHABLE]["exit_code"] == 3
    assert box_ssh(laptop, laptop.host1, "true").returncode == 0


def test_tampered_pinned_host_key_is_refused(laptop, tmp_path):
    laptop.devbox.json("up", laptop.host1)
    known = laptop.home / ".ssh" / "devbox" / "known_hosts"
    impostor = tb.keygen(tmp_path / "impostor")
    fake = Path(str(impostor) + ".pub").read_text().split()
    known.write_text(f"devbox-{laptop.host1} {fake[0]} {fake[1]}\n")
    verify = laptop.devbox("verify", laptop.host1)
    assert verify.returncode == 3 and "does not match the pinned key" in verify.stdout
    assert box_ssh(laptop, laptop.host1, "true").returncode == 255
    again = laptop.devbox("up", laptop.host1)
    assert again.returncode == 3 and "changed since it was pinned" in again.stdout
    assert known.read_text().split()[2] == fake[1], "a changed key is never silently accepted"


def test_verify_and_status_report_from_the_host(laptop):
    laptop.devbox.json("up", laptop.host1)
    reports, _ = laptop.devbox.json("verify", laptop.host1)
    assert reports[0]["exit_code"] == 0 and len(reports[0]["checks"]) >= 15
    rows, _ = laptop.devbox.json("status", laptop.host1, tb.UNREACHABLE, expect=3)
    by_host = {r["host"]: r for r in rows}
    row = by_host[laptop.host1]
    assert row["state"] == "running" and row["keys"] == 1 and row["jobs"] == 0 and row["port"]
    assert row["image"].startswith("devbox-ssh:") and row["gpus"] == "none"
    assert by_host[tb.UNREACHABLE]["state"] == "unreachable" and by_host[tb.UNREACHABLE]["reason"]
    all_rows, _ = laptop.devbox.json("status", "--all")
    assert [r["host"] for r in all_rows] == [laptop.host1]


def test_hosts_defined_in_an_included_file_are_found(laptop):
    """paramiko ignores Include; devbox must follow it (relative to ~/.ssh, globs)."""
    config_d = laptop.home / ".ssh" / "config.d"
    config_d.mkdir()
    (config_d / "hosts.conf").write_text(laptop.ssh_config.read_text())
    laptop.ssh_config.write_text("Include config.d/*.conf\n")
    reports, _ = laptop.devbox.json("up", laptop.host1, "--no-verify")
    assert reports[0]["error"] == ""


def test_missing_image_is_built_on_the_host_from_a_few_kilobytes_of_context(laptop):
    set_config(laptop, "uid = 4321\ngid = 4321\n")
    from devbox.config import load_spec
    from devbox.image import content_tag
    tag = content_tag(load_spec(laptop.host1, laptop.work / "devbox.toml").image)
    subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)
    try:
        reports, _ = laptop.devbox.json("up", laptop.host1)
        report = reports[0]
        assert report["delivery"] == "build-on-host" and 0 < report["bytes_sent"] < 20_000
        assert any("build image" in s for s in report["steps"])
        assert box_ssh(laptop, laptop.host1, "id -u").stdout.strip() == "4321"
    finally:
        laptop.devbox("down", laptop.host1)
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


def test_an_unknown_host_key_on_the_host_itself_is_refused_not_trusted(laptop):
    known = laptop.home / ".ssh" / "known_hosts"
    known.write_text("")
    done = laptop.devbox("up", laptop.host1)
    assert done.returncode == 3 and "not in your known_hosts" in done.stdout
    assert known.read_text() == "" and container_id(f"devbox-{laptop.host1}") is None


def test_the_private_key_never_leaves_the_laptop(laptop):
    laptop.devbox.json("up", laptop.host1)
    secret = [l for l in laptop.identity.read_text().splitlines() if "PRIVATE" not in l][1]
    box = f"devbox-{laptop.host1}"
    inside = subprocess.run(["docker", "exec", box, "grep", "-rlF", secret, "/home", "/workspace", "/tmp"], capture_output=True, text=True)
    assert inside.returncode == 1 and inside.stdout == ""
    logs = subprocess.run(["docker", "logs", box], capture_output=True, text=True)
    assert secret not in logs.stdout + logs.stderr
    output = laptop.devbox("up", laptop.host1, "--json")
    assert secret not in output.stdout + output.stderr


def test_read_only_data_mount_is_verified_read_only_and_workspace_writable(laptop, tmp_path):
    data = Path(tempfile.mkdtemp(prefix="devbox-data-", dir="/var/lib"))
    (data / "train.csv").write_text("x,y\n")
    data.chmod(0o755)
    (data / "train.csv").chmod(0o644)
    try:
        set_config(laptop, f'volumes = ["workspace:/workspace", "{data}:/data:ro"]\n')
        reports, _ = laptop.devbox.json("up", laptop.host1)
        checks = {c["name"]: c for c in reports[0]["checks"]}
        assert checks["mount /data read-only"]["status"] == "ok"
        assert checks["mount /workspace writable"]["status"] == "ok"
        assert box_ssh(laptop, laptop.host1, "cat /data/train.csv").stdout == "x,y\n"
    finally:
        laptop.devbox("down", laptop.host1)
        shutil.rmtree(data)


def test_host_with_its_own_engine_gets_only_the_layers_it_lacks_streamed(engine_laptop, box_image):
    """The engine has the base but no network for apt (no NAT): an air-gapped GPU host."""
    laptop, engine = engine_laptop, engine_laptop.engine
    set_config(laptop, 'delivery = "stream"\n')
    reports, _ = laptop.devbox.json("up", laptop.engine_host)
    report = reports[0]
    assert report["error"] == "" and report["delivery"] == "stream-missing-layers"
    own_layers = box_image.size_added
    assert report["bytes_sent"] <= 1.2 * own_layers + 64 * 1024, (report["bytes_sent"], own_layers)
    assert engine.docker("image", "inspect", box_image.tag).returncode == 0
    assert box_ssh(laptop, laptop.engine_host, "whoami").stdout.strip() == "dev"
    again, _ = laptop.devbox.json("up", laptop.engine_host)
    assert again[0]["changed"] is False and again[0]["delivery"] == "none"


def test_a_uid_change_is_refused_and_the_running_box_is_left_alone(laptop):
    laptop.devbox.json("up", laptop.host1)
    before = container_id(f"devbox-{laptop.host1}")
    set_config(laptop, "uid = 4242\ngid = 4242\n")
    done = laptop.devbox("up", laptop.host1)
    assert done.returncode == 2 and "belong to uid:gid 1000:1000" in done.stdout
    assert container_id(f"devbox-{laptop.host1}") == before
    assert box_ssh(laptop, laptop.host1, "true").returncode == 0


def test_up_on_the_ubuntu_bases_of_the_real_pytorch_images(laptop, ubuntu_base):
    """22.04 carries the pytorch images' conda PATH; 24.04 has its own "ubuntu" user at UID 1000."""
    set_config(laptop, base=ubuntu_base)
    reports, _ = laptop.devbox.json("up", laptop.host1)
    report = reports[0]
    assert report["error"] == "" and report["delivery"] in ("build-on-host", "none"), report
    assert {c["status"] for c in report["checks"]} <= {"ok", "skipped"}, report["checks"]
    probe = box_ssh(laptop, laptop.host1, "id -un; id -u; getent passwd ubuntu || echo no-ubuntu-user; echo $PATH; "
                    "tmux -V; sshd -V 2>&1 | head -1; grep -h '^Uid:' /proc/[0-9]*/status | sort -u")
    lines = probe.stdout.splitlines()
    assert lines[:3] == ["dev", "1000", "no-ubuntu-user"], probe
    box_env = json.loads(subprocess.run(["docker", "inspect", report["container"]], capture_output=True,
                                        text=True).stdout)[0]["Config"]["Env"]
    assert f"PATH={lines[3]}" in box_env, "an ssh session gets the image's PATH (conda first in pytorch images)"
    assert ("/opt/conda/bin" in lines[3]) == ("22.04" in ubuntu_base)
    assert lines[4].startswith("tmux ")
    assert lines[-1].split()[1:] == ["1000"] * 4, "no process in the box runs as root"
    audit = tb.ssh_audit(report["port"])
    assert audit["fail"] == [], audit["fail"]
    assert all(name.startswith("curve25519") and "post-quantum" in note for name, note in audit["warn"]), audit["warn"]


def test_a_new_refresh_label_rebuilds_on_the_host_and_keeps_the_data(laptop):
    laptop.devbox.json("up", laptop.host1)
    assert box_ssh(laptop, laptop.host1, "echo kept > /workspace/keep.txt").returncode == 0
    label = f"t{laptop.home.parent.name[-12:]}".replace("_", "-")
    set_config(laptop, f'refresh = "{label}"\n')
    reports, _ = laptop.devbox.json("up", laptop.host1)
    report = reports[0]
    try:
        assert report["error"] == "" and report["delivery"] == "build-on-host", report
        assert any("re-create" in step for step in report["steps"])
        assert box_ssh(laptop, laptop.host1, "cat /workspace/keep.txt").stdout.strip() == "kept"
    finally:
        tag = subprocess.run(["docker", "inspect", "-f", "{{.Config.Image}}", report["container"]],
                             capture_output=True, text=True).stdout.strip()
        laptop.devbox("down", laptop.host1)
        if tag:
            subprocess.run(["docker", "rmi", tag], capture_output=True)
