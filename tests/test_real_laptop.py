"""`devbox up` from a laptop as users have it: an ops key for hosts, a personal key in keys/,
`Host *` multiplexing defaults and an ssh-agent (tests/laptops.py)."""
from __future__ import annotations

import subprocess

import testbed as tb
from devbox.keys import parse_public_key

pytest_plugins = ("laptops",)  # the real_laptop fixture


def fingerprint(pub) -> str:
    return parse_public_key(pub.read_text()).fingerprint


def entry_of(laptop, host: str) -> str:
    text = (laptop.home / ".ssh" / "devbox" / "config").read_text()
    return next(b for b in text.split("\n\n") if f"Host devbox-{host}\n" in b + "\n")


def test_up_works_first_time_with_an_ops_key_for_hosts_and_a_personal_key_for_boxes(real_laptop):
    laptop = real_laptop
    reports, _ = laptop.devbox.json("up", laptop.host1)
    assert reports[0]["error"] == ""
    assert {c["name"]: c["status"] for c in reports[0]["checks"]}["openssh client path"] == "ok"
    assert {c["status"] for c in reports[0]["checks"]} <= {"ok", "skipped"}
    assert f"IdentityFile {laptop.home}/.ssh/id_ed25519\n" in entry_of(laptop, laptop.host1) + "\n"
    assert laptop.ssh(f"devbox-{laptop.host1}", "whoami").stdout.strip() == "dev"
    verified, _ = laptop.devbox.json("verify", laptop.host1)
    assert verified[0]["exit_code"] == 0, verified
    assert any(laptop.mux.glob("[0-9a-f]*")), "the user's ControlMaster was in use for the host"


def test_a_multiplexed_laptop_still_checks_the_pinned_box_key_every_time(real_laptop):
    laptop = real_laptop
    laptop.devbox.json("up", laptop.host1)
    alias = f"devbox-{laptop.host1}"
    assert laptop.ssh(alias, "true").returncode == 0
    known = laptop.home / ".ssh" / "devbox" / "known_hosts"
    impostor = tb.keygen(laptop.home / "impostor", "impostor")
    pinned = known.read_text()
    line = next(l for l in pinned.splitlines() if l.startswith(alias + " "))
    known.write_text(pinned.replace(line, f"{alias} {' '.join(impostor.with_suffix('.pub').read_text().split()[:2])}"))
    refused = laptop.ssh(alias, "true")
    assert refused.returncode == 255 and "host key" in refused.stderr.lower(), refused.stderr


def test_a_key_only_the_agent_holds_gets_in_even_behind_other_agent_keys(real_laptop):
    """The agent holds the ops key and two strangers before the personal key: offered in that
    order they would spend the box's MaxAuthTries (3). The entry names the key's public half."""
    laptop = real_laptop
    personal = laptop.home / ".ssh" / "id_ed25519"
    for stranger in ("stranger1", "stranger2"):
        laptop.agent_add(tb.keygen(laptop.home / stranger, stranger))
    laptop.agent_add(personal)
    personal.unlink()
    personal.with_suffix(".pub").unlink()
    reports, done = laptop.devbox.json("up", laptop.host1)
    assert reports[0]["error"] == "" and reports[0]["exit_code"] == 0, reports
    assert any("ssh-agent" in step for step in reports[0]["steps"])
    entry = entry_of(laptop, laptop.host1)
    pub = laptop.home / ".ssh" / "devbox" / f"devbox-{laptop.host1}.pub"
    assert f"IdentityFile {pub}" in entry and "IdentitiesOnly yes" in entry
    assert pub.read_text().split()[:2] == (laptop.work / "keys" / "me.pub").read_text().split()[:2]
    assert laptop.ssh(f"devbox-{laptop.host1}", "whoami").stdout.strip() == "dev"
    verified, _ = laptop.devbox.json("verify", laptop.host1)
    assert verified[0]["exit_code"] == 0, verified


def test_no_key_the_box_would_trust_is_refused_before_the_host_is_touched(real_laptop):
    laptop = real_laptop
    stranger = tb.keygen(laptop.home / "stranger", "stranger")
    (laptop.work / "keys" / "me.pub").write_text(stranger.with_suffix(".pub").read_text())
    done = laptop.devbox("up", laptop.host1)
    assert done.returncode == 2, done.stdout + done.stderr
    for key in ("ops_ed25519", "id_ed25519"):
        assert fingerprint(laptop.home / ".ssh" / f"{key}.pub") in done.stdout + done.stderr
    assert "devbox keys add NAME" in done.stdout + done.stderr
    for kind in (["ps", "-aq"], ["volume", "ls", "-q"]):
        made = subprocess.run(["docker", *kind, "--filter", f"label=devbox.host={laptop.host1}"],
                              capture_output=True, text=True).stdout.split()
        assert made == [], f"up touched the host: {kind[0]} {made}"
    assert not (laptop.home / ".ssh" / "devbox" / "config").exists()


def test_a_refused_login_names_the_key_offered_and_the_keys_the_box_is_given(real_laptop):
    laptop = real_laptop
    laptop.devbox.json("up", laptop.host1)
    new = tb.keygen(laptop.home / ".ssh" / "new_ed25519", "new")
    (laptop.work / "keys" / "me.pub").write_text(new.with_suffix(".pub").read_text())
    with (laptop.work / "devbox.toml").open("a") as config:
        config.write(f'identity = "{new}"\n')
    reports, _ = laptop.devbox.json("verify", laptop.host1, expect=3)
    error = reports[0]["error"]
    assert f"key login refused for {fingerprint(new.with_suffix('.pub'))}" in error, error
    assert "devbox keys sync" in error
