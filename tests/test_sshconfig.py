"""SSH config handling (pure file logic): Include following, the Include line, pinning."""

import pytest

from devbox import sshconfig
from devbox.errors import HostKeyMismatch


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir(mode=0o700)
    return tmp_path


def test_include_is_followed_relative_to_ssh_dir_with_globs_and_tilde(home):
    ssh = home / ".ssh"
    (ssh / "conf.d").mkdir()
    (ssh / "conf.d" / "a.conf").write_text("Host alpha\n    HostName 10.0.0.1\n")
    (ssh / "conf.d" / "b.conf").write_text("Host beta\n    User ops\n    Include ~/.ssh/deeper\n")
    (ssh / "deeper").write_text("Host gamma\n    Port 2200\n")
    (ssh / "config").write_text("Include conf.d/*.conf\nHost *\n    ServerAliveInterval 5\n")
    config = sshconfig.load_user_config()
    assert config.lookup("alpha")["hostname"] == "10.0.0.1"
    assert config.lookup("beta")["user"] == "ops"
    assert config.lookup("gamma")["port"] == "2200"


def test_paramiko_alone_would_not_find_an_included_host(home):
    """The reason devbox expands Includes itself (measured with paramiko 5.1)."""
    from paramiko import SSHConfig

    (home / ".ssh" / "inc").write_text("Host alpha\n    HostName 10.0.0.1\n")
    (home / ".ssh" / "config").write_text(f"Include {home}/.ssh/inc\n")
    assert SSHConfig.from_path(str(home / ".ssh" / "config")).lookup("alpha")["hostname"] == "alpha"
    assert sshconfig.load_user_config().lookup("alpha")["hostname"] == "10.0.0.1"


def test_include_loop_is_an_error_not_a_hang(home):
    (home / ".ssh" / "config").write_text("Include config\n")
    with pytest.raises(Exception, match="nested"):
        sshconfig.load_user_config()


def test_include_line_is_added_once_at_the_top_after_a_backup(home):
    config = home / ".ssh" / "config"
    original = "Host mine\n    HostName 10.1.1.1\n"
    config.write_text(original)
    assert sshconfig.ensure_include() is True
    assert sshconfig.ensure_include() is False
    text = config.read_text()
    assert text.count("Include ") == 1 and text.endswith(original)
    assert text.splitlines()[1] == f"Include {home}/.ssh/devbox/config"
    backups = list((home / ".ssh").glob("config.devbox-backup-*"))
    assert len(backups) == 1 and backups[0].read_text() == original


def test_entries_are_replaced_not_duplicated(home):
    entry = sshconfig.BoxEntry("gpu-host-3", 20001, "dev", "/k")
    assert sshconfig.write_entry(entry) and not sshconfig.write_entry(entry)
    sshconfig.write_entry(sshconfig.BoxEntry("gpu-host-3", 20002, "dev", "/k"))
    text = sshconfig.devbox_config_path().read_text()
    assert text.count("Host devbox-gpu-host-3") == 1 and "Port 20002" in text
    assert "StrictHostKeyChecking yes" in text and "HostKeyAlias devbox-gpu-host-3" in text
    assert sshconfig.remove_entry("gpu-host-3") and "gpu-host-3" not in sshconfig.devbox_config_path().read_text()


def test_a_changed_host_key_is_refused_unless_repinned(home):
    sshconfig.pin_host_key("h", "ssh-ed25519 AAAAfirst comment")
    assert sshconfig.pin_host_key("h", "ssh-ed25519 AAAAfirst") is False
    with pytest.raises(HostKeyMismatch, match="changed"):
        sshconfig.pin_host_key("h", "ssh-ed25519 AAAAsecond")
    assert sshconfig.pinned_keys()["devbox-h"] == "ssh-ed25519 AAAAfirst"
    assert sshconfig.pin_host_key("h", "ssh-ed25519 AAAAsecond", replace=True)
    with pytest.raises(HostKeyMismatch, match="type"):
        sshconfig.pin_host_key("h", "ssh-rsa AAAA")


# ---------------------------------------------------------------- routes: ProxyJump / ProxyCommand

ROUTES = """\
Host both-jump-first
    ProxyJump j1
    ProxyCommand nc %h %p
Host both-command-first
    ProxyCommand nc %h %p
    ProxyJump j1
Host command-none
    ProxyCommand none
Host jump-none
    ProxyJump none
Host matched
    HostName 10.1.2.3
Match host 10.1.2.3
    ProxyCommand nc matched %h
Host *.corp
    ProxyCommand nc star-corp %h
Host *
    ProxyJump star
"""


def _openssh_route(config, alias: str) -> str:
    """What the OpenSSH client resolves (`ssh -G`): 'jump X', 'command X' or 'direct'."""
    import subprocess

    out = subprocess.run(["ssh", "-F", str(config), "-G", alias], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        if key in ("proxyjump", "proxycommand"):
            return f"{key[5:]} {value}"
    return "direct"


def _our_route(ssh_config, alias: str) -> str:
    from devbox.remote import route_of

    route = route_of(alias, ssh_config.lookup(alias))
    if route.command:
        return "command"
    return "jump " + ",".join(h.host for h in route.jump) if route.jump else "direct"


@pytest.mark.parametrize("alias", ["both-jump-first", "both-command-first", "command-none", "jump-none", "matched", "gpu.corp", "plain"])
def test_proxyjump_or_proxycommand_first_obtained_wins_as_openssh_resolves_it(home, alias):
    """`none` counts as obtained (it hides a later `Host *` route); Match and wildcards apply."""
    config = home / ".ssh" / "config"
    config.write_text(ROUTES)
    theirs = _openssh_route(config, alias)
    ours = _our_route(sshconfig.load_user_config(), alias)
    assert ours == (theirs.split(" ")[0] if theirs.startswith("command") else theirs)


def test_proxycommand_tokens_expand_as_openssh_expands_them(home, tmp_path):
    """Run the same ProxyCommand through OpenSSH and through devbox: both write the same line."""
    import subprocess

    from devbox.remote import _ProxyCommand, route_of

    theirs, ours = tmp_path / "theirs", tmp_path / "ours"
    config = home / ".ssh" / "config"
    config.write_text("Host gpu\n    HostName 10.4.5.6\n    Port 2222\n    User ops\n"
                      "    ProxyCommand sh -c 'echo %h %p %n %r 100%% ~ > OUT; sleep 0.5'\n")  # ssh HUPs it at EOF
    text = config.read_text()
    config.write_text(text.replace("OUT", str(theirs)))
    subprocess.run(["ssh", "-F", str(config), "-o", "BatchMode=yes", "gpu", "true"], capture_output=True, timeout=20,
                   env={"PATH": "/usr/bin:/bin", "HOME": str(home)})
    config.write_text(text.replace("OUT", str(ours)))
    proxy = _ProxyCommand(route_of("gpu", sshconfig.load_user_config().lookup("gpu")).command)
    proxy.process.wait(timeout=10)
    proxy.close()
    assert ours.read_text() == theirs.read_text() == f"10.4.5.6 2222 gpu ops 100% {home}\n"


def test_an_unknown_token_is_a_config_error(home):
    from devbox.errors import ConfigError
    from devbox.remote import route_of

    (home / ".ssh" / "config").write_text("Host gpu\n    ProxyCommand nc %h %z\n")
    with pytest.raises(ConfigError, match="unknown token %z"):
        route_of("gpu", sshconfig.load_user_config().lookup("gpu"))


def test_proxyjump_hops_are_read_as_openssh_reads_them():
    from devbox.remote import Hop, parse_jump

    assert parse_jump("a, ops@b:2222,ssh://u@[fe80::1]:22,ssh://c/,x@y@z") == (
        Hop("a"), Hop("b", "ops", 2222), Hop("fe80::1", "u", 22), Hop("c"), Hop("z", "x@y"))


def test_a_jump_chain_reaches_each_hop_through_the_previous_one(home):
    """`ProxyJump a,ops@b:2200`: laptop -> a -> b -> gpu. Only a follows its own route (here a
    ProxyCommand); b's own ProxyJump is ignored, as OpenSSH does for -J a,b."""
    from devbox.remote import _make_connection

    (home / ".ssh" / "config").write_text(
        "Host gpu\n    HostName 10.0.0.9\n    ProxyJump a,ops@b:2200\n"
        "Host a\n    HostName 10.0.0.1\n    ProxyCommand nc %h %p\n"
        "Host b\n    HostName 10.0.0.2\n    ProxyJump elsewhere\n")
    conn = _make_connection("gpu", sshconfig.load_user_config(), 5)
    b = conn.gateway
    a = b.gateway
    assert (conn.host, b.original_host, b.host, b.user, b.port) == ("10.0.0.9", "b", "10.0.0.2", "ops", 2200)
    assert (a.original_host, a.gateway) == ("a", "nc 10.0.0.1 22")


def test_a_jump_loop_is_a_config_error_not_a_fork_bomb(home):
    """OpenSSH itself spawns ssh after ssh on such a config (seen: 800 processes in 2 s)."""
    from devbox.errors import ConfigError
    from devbox.remote import _make_connection

    (home / ".ssh" / "config").write_text("Host a\n    ProxyJump b\nHost b\n    ProxyJump a\n")
    with pytest.raises(ConfigError, match="ProxyJump loop a -> b -> a"):
        _make_connection("a", sshconfig.load_user_config(), 5)


def test_a_host_missing_from_the_config_says_so_exit_2(home):
    from devbox.errors import ConfigError
    from devbox.remote import Host

    (home / ".ssh" / "config").write_text("Host other\n    HostName 10.0.0.1\n")
    with pytest.raises(ConfigError) as missing:
        Host("nohost-zz").connection
    assert missing.value.one_line() == "nohost-zz is not a Host in your ~/.ssh/config (add a Host nohost-zz block)"
    assert missing.value.exit_code == 2


def test_a_failing_proxycommand_says_check_ssh_with_its_stderr(home):
    from devbox.errors import HostUnreachable
    from devbox.remote import Host

    (home / ".ssh" / "config").write_text("Host *\n    ProxyCommand sh -c 'echo tunnel refused: no such instance >&2; exit 1'\n")
    with pytest.raises(HostUnreachable) as failed:
        Host("iap-only", connect_timeout=5).connection
    line = failed.value.one_line()
    assert "ProxyCommand" in line and "tunnel refused: no such instance" in line and "check `ssh iap-only` works" in line


def test_known_hosts_files_are_every_user_file_then_the_global_ones(home):
    from devbox.remote import known_hosts_files

    (home / ".ssh" / "config").write_text(
        "Host gpu\n    HostName 10.0.0.7\n    UserKnownHostsFile ~/.ssh/kh_%h %d/.ssh/kh2 none\n"
        "Host other\n    GlobalKnownHostsFile /etc/ssh/mine\n")
    config = sshconfig.load_user_config()
    assert known_hosts_files("gpu", config.lookup("gpu")) == [
        home / ".ssh" / "kh_10.0.0.7", home / ".ssh" / "kh2",
        sshconfig.Path("/etc/ssh/ssh_known_hosts"), sshconfig.Path("/etc/ssh/ssh_known_hosts2")]
    assert known_hosts_files("other", config.lookup("other"))[-1] == sshconfig.Path("/etc/ssh/mine")


def test_each_hop_checks_its_key_under_hostkeyalias_or_host_and_port(home):
    from devbox.remote import _make_connection

    (home / ".ssh" / "config").write_text(
        "Host gpu\n    HostName 10.0.0.9\n    Port 2222\n    ProxyJump jump\n"
        "Host jump\n    HostName 10.0.0.1\n    HostKeyAlias the-bastion\n")
    conn = _make_connection("gpu", sshconfig.load_user_config(), 5)
    assert conn.client._policy.name == "[10.0.0.9]:2222"
    assert conn.gateway.client._policy.name == "the-bastion"


def test_the_host_key_types_known_are_offered_first(home):
    """As OpenSSH orders HostKeyAlgorithms: the host shows a key known_hosts can vouch for."""
    from devbox.remote import _transport_factory

    import socket

    transport = _transport_factory(["ssh-rsa", "ecdsa-sha2-nistp256"])(socket.socket())
    # an ssh-rsa line vouches for rsa-sha2-* signatures (paramiko 5 no longer offers SHA-1 ssh-rsa)
    assert transport.get_security_options().key_types[:3] == ("rsa-sha2-512", "rsa-sha2-256", "ecdsa-sha2-nistp256")
    transport.close()


def test_entries_written_at_once_by_many_threads_are_all_kept(tmp_path, monkeypatch):
    """`up` over many hosts writes each entry from its own thread: none may be lost."""
    from concurrent.futures import ThreadPoolExecutor

    from devbox import sshconfig

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("DEVBOX_SSH_CONFIG", raising=False)
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "config").write_text("Host gpu\n    HostName 127.0.0.1\n")

    def one(i: int) -> None:
        sshconfig.write_entry(sshconfig.BoxEntry(f"h{i}", 20000 + i, "dev", "/k"))
        sshconfig.pin_host_key(f"h{i}", f"ssh-ed25519 AAAA{i}")
        sshconfig.ensure_include()

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(40)))
    assert len(sshconfig.read_entries()) == 40 and len(sshconfig.pinned_keys()) == 40
    assert (tmp_path / ".ssh" / "config").read_text().count("Include ") == 1
