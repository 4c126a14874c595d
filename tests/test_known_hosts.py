"""known_hosts read as OpenSSH reads it (pure): any matching line accepts, @revoked refuses,
@cert-authority is refused with a clear message, hashed names, patterns, [host]:port."""
from __future__ import annotations

import base64
import hashlib
import hmac
import subprocess

import pytest

from devbox import known_hosts as kh
from devbox.errors import HostKeyMismatch, HostUnreachable

RIGHT = b"\x00\x00\x00\x0bssh-ed25519right-key-bytes"
STALE = b"\x00\x00\x00\x0bssh-ed25519stale-key-bytes"


def b64(blob: bytes) -> str:
    return base64.b64encode(blob).decode()


def hashed(name: str, salt: bytes = b"0123456789abcdefghij") -> str:
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{b64(salt)}|{b64(digest)}"


def check(text: str, name: str, blob: bytes = RIGHT):
    return kh.verify("gpu-1", name, blob, kh.parse(text, "kh"))


def test_a_stale_line_next_to_the_right_one_is_accepted_whichever_comes_first():
    for text in (f"gpu1 ssh-ed25519 {b64(STALE)}\ngpu1 ssh-ed25519 {b64(RIGHT)}\n",
                 f"gpu1 ssh-ed25519 {b64(RIGHT)}\ngpu1 ssh-ed25519 {b64(STALE)}\n"):
        assert check(text, "gpu1").blob == RIGHT


def test_only_different_keys_is_a_mismatch_naming_the_lines():
    with pytest.raises(HostKeyMismatch, match=r"matches none of its known_hosts lines \(kh:2\)") as refused:
        check(f"# old\ngpu1 ssh-ed25519 {b64(STALE)}\n", "gpu1")
    assert "intercepting" in refused.value.remedy


def test_a_revoked_key_is_refused_even_when_a_plain_line_also_holds_it():
    text = f"gpu1 ssh-ed25519 {b64(RIGHT)}\n@revoked * ssh-ed25519 {b64(RIGHT)}\n"
    with pytest.raises(HostKeyMismatch, match="revoked in kh:2"):
        check(text, "gpu1")
    assert check(f"gpu1 ssh-ed25519 {b64(RIGHT)}\n@revoked * ssh-ed25519 {b64(STALE)}\n", "gpu1")


def test_cert_authority_lines_alone_are_refused_with_a_clear_message():
    with pytest.raises(HostUnreachable, match="host certificates are not supported yet") as refused:
        check(f"@cert-authority *.example.com ssh-ed25519 {b64(STALE)}\n", "gpu1.example.com")
    assert "plain key" in refused.value.remedy


def test_unknown_host_asks_for_a_first_ssh():
    with pytest.raises(HostUnreachable, match="not in your known_hosts"):
        check(f"other ssh-ed25519 {b64(RIGHT)}\n", "gpu1")


def test_hashed_names_match_only_their_host():
    assert check(f"{hashed('gpu1')} ssh-ed25519 {b64(RIGHT)}\n", "gpu1")
    with pytest.raises(HostUnreachable):
        check(f"{hashed('gpu2')} ssh-ed25519 {b64(RIGHT)}\n", "gpu1")


def test_hashing_agrees_with_ssh_keygen(tmp_path):
    """Our HMAC-SHA1 matches what `ssh-keygen -H` writes (HashKnownHosts yes)."""
    path = tmp_path / "kh"
    path.write_text(f"[10.9.8.7]:2222 ssh-ed25519 {b64(RIGHT)}\n")
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(path)], check=True, capture_output=True)
    assert path.read_text().startswith("|1|")
    assert kh.verify("h", "[10.9.8.7]:2222", RIGHT, kh.read([path]))


def test_patterns_wildcards_negation_and_ports():
    line = kh.parse(f"*.lab,!bad.lab,[10.0.0.?]:2200 ssh-ed25519 {b64(RIGHT)}\n")[0]
    assert kh.names_host(line, "gpu.lab") and not kh.names_host(line, "bad.lab")
    assert kh.names_host(line, "[10.0.0.5]:2200") and not kh.names_host(line, "10.0.0.5")
    assert not kh.names_host(line, "[10.0.0.5]:22")


def test_the_name_is_host_or_bracketed_port_or_the_alias_verbatim():
    assert kh.host_name("GPU1", 22) == "gpu1"
    assert kh.host_name("10.0.0.1", 2222) == "[10.0.0.1]:2222"
    assert kh.host_name("10.0.0.1", 2222, "devbox-gpu1") == "devbox-gpu1"


def test_several_files_are_read_and_missing_ones_skipped(tmp_path):
    (tmp_path / "a").write_text(f"gpu1 ssh-ed25519 {b64(STALE)}\n")
    (tmp_path / "b").write_text(f"garbage\n@unknown gpu1 ssh-ed25519 {b64(RIGHT)}\ngpu1 ssh-ed25519 {b64(RIGHT)}\n")
    lines = kh.read([tmp_path / "a", tmp_path / "missing", tmp_path / "b"])
    assert [l.where for l in lines] == [f"{tmp_path}/a:1", f"{tmp_path}/b:3"]
    assert kh.verify("gpu1", "gpu1", RIGHT, lines).where == f"{tmp_path}/b:3"


def test_key_types_known_for_a_host_come_in_file_order():
    text = f"gpu1 ssh-rsa {b64(STALE)}\nother ecdsa-sha2-nistp256 {b64(STALE)}\ngpu1 ssh-ed25519 {b64(RIGHT)}\n"
    assert kh.key_types(kh.parse(text), "gpu1") == ["ssh-rsa", "ssh-ed25519"]
