"""Issue 13: the command line attacked with hostile and careless input.

Every case runs the real `devbox` in a subprocess, as a user would: no option smuggled
into ssh, no traceback ever, usage errors exit 2 in one line with a remedy.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

HOSTILE_HOSTS = ["-oProxyCommand=x", "a b", "", "../x", "x/y", "a;b", b"h\xff", "h\n", "9" * 300]


def devbox(*args, home: Path, cwd: Path | None = None, stdin=subprocess.DEVNULL) -> subprocess.CompletedProcess:
    """The real CLI; bytes arguments reach it as raw argv bytes (not UTF-8 ones become surrogates)."""
    env = {**os.environ, "HOME": str(home)}
    env.pop("DEVBOX_DEBUG", None)
    argv = [os.fsencode(sys.executable), b"-m", b"devbox.cli", *(a if isinstance(a, bytes) else os.fsencode(a) for a in args)]
    return subprocess.run(argv, capture_output=True, env=env, cwd=cwd or home, stdin=stdin, timeout=60)


def assert_refused(done: subprocess.CompletedProcess, code: int = 2) -> str:
    out = (done.stdout + done.stderr).decode(errors="replace")
    assert "Traceback" not in out and "internal error" not in out, out
    assert done.returncode == code, f"exit {done.returncode}: {out}"
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- item 5: no argument injection into ssh


@pytest.fixture
def ssh_home(tmp_path):
    """A laptop HOME whose ssh config knows devbox-h (a closed port) and never prompts."""
    ssh = tmp_path / ".ssh"
    ssh.mkdir(mode=0o700)
    (ssh / "config").write_text(f"Host *\n  BatchMode yes\n  ConnectTimeout 3\n  HostName 127.0.0.1\n  Port {free_port()}\n"
                                f"  UserKnownHostsFile /dev/null\n")
    return tmp_path


@pytest.mark.parametrize("args", [
    ["ssh", "h", "--", "-oProxyCommand=touch {marker}"],
    ["ssh", "h", "-oProxyCommand=touch {marker}"],
    ["ssh", "h", "--", "true", "-oProxyCommand=touch {marker}"],
    ["ssh", "-oProxyCommand=touch {marker}"],
    ["ssh", "--", "-oProxyCommand=touch {marker}"],
    ["attach", "-oProxyCommand=touch {marker}", "job"],
    ["attach", "--", "-oProxyCommand=touch {marker}", "job"],
])
def test_ssh_options_after_the_host_never_reach_the_ssh_client(ssh_home, args):
    """`devbox ssh HOST -- -oProxyCommand=…` ran a local command; with the real OpenSSH client it creates nothing now."""
    marker = ssh_home / "pwned"
    done = devbox(*[a.format(marker=marker) for a in args], home=ssh_home)
    out = (done.stdout + done.stderr).decode(errors="replace")
    assert not marker.exists(), f"ssh ran the smuggled ProxyCommand: {out}"
    assert "Traceback" not in out and done.returncode != 0


def test_ssh_still_runs_a_command_that_starts_with_a_dash_as_a_command(ssh_home):
    """The words after the host are the remote command: ssh got `--` before the destination."""
    marker = ssh_home / "pwned"
    done = devbox("ssh", "h", "--", f"-oProxyCommand=touch {marker}", home=ssh_home)
    # ssh tried the box (and failed to connect: nobody listens), it did not run the proxy
    assert b"Connection refused" in done.stderr or b"timed out" in done.stderr, done.stderr


def test_code_refuses_a_hostile_host_or_a_path_that_is_an_option(tmp_path):
    for args in (["code", "-oProxyCommand=x"], ["code", "h", "--", "--install-extension=evil"], ["code", "h", "relative"]):
        assert_refused(devbox(*args, home=tmp_path))


# ---------------------------------------------------------------- item 6: no tracebacks, ever


def _bad_config(tmp_path: Path, text: str) -> Path:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    (work / "devbox.toml").write_text(text)
    return work


HOST_COMMANDS = [
    ["up", "{h}"], ["verify", "{h}"], ["status", "{h}"], ["down", "{h}"], ["keys", "sync", "{h}"],
    ["run", "{h}", "--name", "j", "--", "true"], ["ps", "{h}"], ["logs", "{h}", "j"], ["stop", "{h}", "j"],
    ["ssh", "{h}"], ["attach", "{h}", "j"], ["code", "{h}"],
]


@pytest.mark.parametrize("host", HOSTILE_HOSTS, ids=repr)
def test_every_host_command_refuses_a_hostile_host_name_with_exit_2(tmp_path, host):
    for command in HOST_COMMANDS:
        args = [host if a == "{h}" else a for a in command]
        out = assert_refused(devbox(*args, home=tmp_path))
        assert "not a valid host name" in out or "Usage:" in out, (command, out)


@pytest.mark.parametrize("config", [
    "hosts = 3\n", "defaults = 3\n", 'defaults = "x"\n', "[hosts]\nh = [1]\n", "[defaults\n", "\xff = 1\n",
    '[defaults]\nvolumes = ["workspace:/home/dev"]\n', '[defaults]\nvolumes = ["/var/run/docker.sock:/d"]\n',
    '[defaults]\nplaybook = "/dev/zero/x"\n', "[defaults]\nuid = 99999999999999999999\n",
], ids=repr)
def test_every_config_reading_command_refuses_a_bad_devbox_toml_with_exit_2(tmp_path, config):
    work = _bad_config(tmp_path, config)
    for command in [c for c in HOST_COMMANDS if c[0] not in ("ssh", "attach", "code")] + [["status", "--all"], ["keys", "sync", "--all"]]:
        args = ["h" if a == "{h}" else a for a in command]
        out = assert_refused(devbox(*args, home=tmp_path, cwd=work))
        assert "devbox.toml" in out or "--all" in command, (command, out)


@pytest.mark.parametrize("args", [
    ["up", "h", "--config", "/nonexistent.toml"],
    ["status", "--all", "--config", "/nonexistent.toml"],
    ["up", "h", "--playbook", b"\xff"],
    ["up", "h", "--playbook", "/dev/zero"],
    ["run", "h", "--name", "j", "--", b"\xff"],
    ["run", "h", "--name", "j", "--", "python", b"caf\xe9"],
    ["run", "h", "--name", "j", "--env", b"A=\xff", "--", "true"],
    ["run", "h", "--name", "j", "--cwd", b"/w\xff", "--", "true"],
    ["run", "h", "--name", b"j\xff", "--", "true"],
    ["logs", "h", "j", "--tail", "1" + "0" * 400],
    ["stop", "h", "j", "--signal", "9" * 30],
    ["stop", "h", "j", "--signal", b"\xff"],
    ["build", "--uid", "9" * 30],
    ["build", "--gid", "-1"],
    ["build", "--user", "root; id"],
    ["build", "--refresh", b"\xff"],
    ["keys", "add", "x", "/dev/zero"],
    ["keys", "add", "x", "/dev/urandom"],
    ["keys", "add", "x", "/"],
    ["keys", "add", "x", "/nonexistent.pub"],
    ["keys", "add", "x", b"/tmp/\xff"],
    ["keys", "add", b"\xff", "/dev/null"],
    ["keys", "add", "x", "-"],
    ["keys", "revoke", "nobody"],
    ["keys", "revoke", "../etc/passwd"],
    ["keys", "gen", "/proc/nope/key"],
    ["keys", "gen", "/dev/null/key"],
    ["down", "h", "--purge"],
], ids=repr)
def test_bad_input_to_any_command_is_one_line_exit_2_and_no_traceback(tmp_path, args):
    done = devbox(*args, home=tmp_path)
    assert_refused(done)
    assert done.stderr.startswith(b"devbox: error: ") and done.stderr.count(b"\n") == 1, done.stderr


def test_keys_add_from_an_endless_stdin_stops_at_64_kib(tmp_path):
    with open("/dev/zero", "rb") as zero:
        out = assert_refused(devbox("keys", "add", "x", "-", home=tmp_path, stdin=zero))
    assert "64 KiB" in out


@pytest.mark.parametrize("args", [
    ["nosuch"], ["up"], ["up", "h", "--bad"], ["logs", "h", "j", "--tail", "x"], ["keys", "nosuch"],
    ["run", "h", "--", "true"], ["run", "h", "--name", "j"], ["build", "--uid", "x"], ["status", "--json=3"],
], ids=repr)
def test_typer_usage_errors_exit_2_without_a_traceback(tmp_path, args):
    out = assert_refused(devbox(*args, home=tmp_path))
    assert "Error: " in out


def test_help_of_every_command_works(tmp_path):
    for command in (["build"], ["up"], ["verify"], ["status"], ["down"], ["ssh"], ["code"], ["run"], ["ps"], ["logs"],
                    ["attach"], ["stop"], ["keys"], ["keys", "add"], ["keys", "list"], ["keys", "gen"], ["keys", "revoke"],
                    ["keys", "sync"]):
        done = devbox(*command, "--help", home=tmp_path)
        assert done.returncode == 0 and b"Traceback" not in done.stdout + done.stderr, command


def test_a_bug_is_one_line_that_says_internal_error_and_exit_70(monkeypatch, capsys):
    """The last resort: never a traceback, but never silent either."""
    from devbox import cli

    def broken():
        raise KeyError("boom")

    monkeypatch.delenv("DEVBOX_DEBUG", raising=False)
    monkeypatch.setattr(cli, "app", broken)
    with pytest.raises(SystemExit) as done:
        cli.main()
    err = capsys.readouterr().err
    assert done.value.code == 70 and err.count("\n") == 1
    assert err.startswith("devbox: internal error: KeyError: 'boom' (please report; re-run with DEVBOX_DEBUG=1")
    monkeypatch.setenv("DEVBOX_DEBUG", "1")
    with pytest.raises(KeyError):
        cli.main()


# ---------------------------------------------------------------- item 2 on the real test bed


@pytest.mark.parametrize("volumes", [
    '["workspace:/home/dev"]', '["workspace:/workspace", "more:/workspace/x"]', '["w://etc"]', '["w:/x/../usr"]',
    '["/var/run/docker.sock:/var/run/docker.sock"]', '["/:/host:ro"]',
])
def test_a_bad_run_spec_is_refused_before_the_running_box_is_touched(laptop, volumes):
    reports, _ = laptop.devbox.json("up", laptop.host1)
    assert reports[0]["error"] == ""
    box = f"devbox-{laptop.host1}"
    before = subprocess.run(["docker", "inspect", "-f", "{{.Id}} {{.State.Running}}", box], capture_output=True, text=True).stdout
    config = laptop.work / "devbox.toml"
    config.write_text(config.read_text() + f"[hosts.{laptop.host1}]\nvolumes = {volumes}\n")
    done = laptop.devbox("up", laptop.host1)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert f"devbox.toml [hosts.{laptop.host1}]: bad value for 'volumes'" in done.stderr
    after = subprocess.run(["docker", "inspect", "-f", "{{.Id}} {{.State.Running}}", box], capture_output=True, text=True).stdout
    assert after == before and before.endswith("true\n")
    assert laptop.ssh(box, "true").returncode == 0


@pytest.mark.parametrize("breakage", ["revoked-is-a-folder", "binary-key-file", "bad-file-name", "huge-key-file"])
def test_a_broken_keys_folder_is_one_line_naming_the_file(tmp_path, breakage):
    keys = tmp_path / "keys"
    keys.mkdir()
    if breakage == "revoked-is-a-folder":
        (keys / "revoked").mkdir()
        (keys / "x.pub").write_text("")
    elif breakage == "binary-key-file":
        (keys / "x.pub").write_bytes(b"\xff\xfe\x00")
    elif breakage == "bad-file-name":
        (keys / "Bad Name.pub").write_text("")
    else:
        (keys / "x.pub").write_bytes(b"ssh-ed25519 " + b"A" * 100_000)
    pub = tmp_path / "k.pub"
    pub.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl k\n")
    for args in (["keys", "list"], ["keys", "add", "y", str(pub)], ["keys", "revoke", "x"], ["keys", "sync", "h"], ["up", "h"]):
        done = devbox(*args, home=tmp_path)
        out = assert_refused(done)
        assert (str(keys) in out or "no key named" in out) and done.stderr.count(b"\n") == 1, (args, out)
