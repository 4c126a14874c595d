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
