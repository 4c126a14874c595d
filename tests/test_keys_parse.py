"""Key validation (pure): what may enter keys/, proved against real keys and fuzzed input."""
from __future__ import annotations

import base64
import os
import shutil
import struct
import subprocess
import warnings

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa
from hypothesis import given, settings, strategies as st

from devbox.errors import KeyRejected
from devbox.keys import (AUTHORIZED_KEY_OPTIONS, KeyStore, generate_keypair, keyset_fingerprint, parse_public_key,
                         parse_public_keys, render_authorized_keys)


def openssh(key) -> str:
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def wire(*fields: bytes) -> str:
    return base64.b64encode(b"".join(struct.pack(">I", len(f)) + f for f in fields)).decode()


ED = openssh(ed25519.Ed25519PrivateKey.generate()) + " alice@laptop"


def test_ed25519_rsa3072_and_ecdsa_are_accepted():
    assert parse_public_key(ED).bits == 256 and parse_public_key(ED).comment == "alice@laptop"
    assert parse_public_key(openssh(rsa.generate_private_key(public_exponent=65537, key_size=3072))).bits == 3072
    assert parse_public_key(openssh(ec.generate_private_key(ec.SECP256R1()))).type == "ecdsa-sha2-nistp256"


def test_rsa_2048_is_refused():
    with pytest.raises(KeyRejected, match="2048 bits"):
        parse_public_key(openssh(rsa.generate_private_key(public_exponent=65537, key_size=2048)))


def test_dsa_is_refused():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = openssh(dsa.generate_private_key(key_size=1024))
    with pytest.raises(KeyRejected, match="ssh-dss"):
        parse_public_key(text)


@pytest.mark.parametrize("fmt", [serialization.PrivateFormat.OpenSSH, serialization.PrivateFormat.PKCS8,
                                 serialization.PrivateFormat.TraditionalOpenSSL])
def test_private_keys_are_refused_without_echoing_them(fmt):
    key = ec.generate_private_key(ec.SECP256R1())
    text = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()).decode()
    with pytest.raises(KeyRejected) as err:
        parse_public_key(text)
    assert "PRIVATE" in err.value.message and text.splitlines()[1] not in err.value.one_line()


def test_security_key_types_are_checked_by_wire_format():
    point = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    sk = parse_public_key(f"sk-ssh-ed25519@openssh.com {wire(b'sk-ssh-ed25519@openssh.com', point, b'ssh:')} yubi")
    assert sk.bits == 256
    ec_point = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    name = b"sk-ecdsa-sha2-nistp256@openssh.com"
    assert parse_public_key(f"{name.decode()} {wire(name, b'nistp256', ec_point, b'ssh:')}").type == name.decode()
    with pytest.raises(KeyRejected, match="wrong-length"):
        parse_public_key(f"sk-ssh-ed25519@openssh.com {wire(b'sk-ssh-ed25519@openssh.com', point[:31], b'ssh:')}")
    with pytest.raises(KeyRejected, match="curve point"):
        off_curve = wire(name, b"nistp256", bytes([4]) + bytes([1]) * 64, b"ssh:")
        parse_public_key(f"{name.decode()} {off_curve}")


@pytest.mark.parametrize("prefix", ['command="/bin/sh" ', 'from="*" ', 'environment="LD_PRELOAD=x" ', "restrict ", "no-pty,permitopen=\"x:1\" "])
def test_authorized_keys_options_are_refused(prefix):
    with pytest.raises(KeyRejected, match="options are not allowed"):
        parse_public_key(prefix + ED)


def test_truncated_base64_and_mismatched_type_are_refused():
    kind, blob, _ = ED.split()
    with pytest.raises(KeyRejected):
        parse_public_key(f"{kind} {blob[:-8]}")
    with pytest.raises(KeyRejected, match="blob is"):
        parse_public_key(f"ssh-rsa {blob}")


def test_several_keys_need_allow_many():
    two = ED + "\n" + openssh(ed25519.Ed25519PrivateKey.generate()) + "\n"
    with pytest.raises(KeyRejected, match="several keys") as err:
        parse_public_keys(two)
    assert "--all" in err.value.remedy
    assert len(parse_public_keys(two, allow_many=True)) == 2


@pytest.mark.skipif(not shutil.which("ssh-keygen"), reason="ssh-keygen (openssh-client) is not installed")
def test_fingerprint_matches_ssh_keygen(tmp_path):
    path = tmp_path / "k.pub"
    path.write_text(ED + "\n")
    printed = subprocess.run(["ssh-keygen", "-lf", str(path)], capture_output=True, text=True, check=True).stdout.split()[1]
    assert parse_public_key(ED).fingerprint == printed


MUTATIONS = st.lists(st.tuples(st.sampled_from(["drop", "insert", "flip"]), st.integers(0, 200), st.characters()), max_size=6)


@settings(max_examples=300, deadline=None)
@given(prefix=st.text(max_size=20), mutations=MUTATIONS, random=st.text(max_size=300))
def test_parser_only_ever_returns_a_key_or_raises_key_rejected(prefix, mutations, random):
    line = prefix + ED
    for op, index, char in mutations:
        index %= max(len(line), 1)
        line = {"drop": line[:index] + line[index + 1:], "insert": line[:index] + char + line[index:],
                "flip": line[:index] + char + line[index + 1:]}[op]
    for text in (line, random):
        try:
            key = parse_public_key(text)
        except KeyRejected:
            continue
        assert key.type in line and key.fingerprint.startswith("SHA256:")


def test_render_adds_only_the_allowed_options_and_dedups():
    key = parse_public_key(ED)
    text = render_authorized_keys([key, key.with_comment("other")])
    lines = [l for l in text.splitlines() if not l.startswith("#")]
    assert lines == [f"{AUTHORIZED_KEY_OPTIONS} {key.line()}"] or lines == [f"{AUTHORIZED_KEY_OPTIONS} {key.with_comment('other').line()}"]
    assert AUTHORIZED_KEY_OPTIONS == "restrict,port-forwarding,pty"


def test_store_add_list_revoke_and_readd(tmp_path):
    store = KeyStore(tmp_path / "keys")
    store.add("alice", ED)
    with pytest.raises(KeyRejected, match="already"):
        store.add("alice", ED)
    assert [(n, k.comment) for n, k in store.list()] == [("alice", "alice")]
    fp = keyset_fingerprint(store.active_keys())
    store.revoke("alice")
    assert store.active_keys() == [] and parse_public_key(ED).fingerprint in store.revoked_fingerprints()
    store.add("alice", ED)
    assert len(store.active_keys()) == 1 and keyset_fingerprint(store.active_keys()) == fp
    with pytest.raises(KeyRejected, match="no key named") as err:
        store.revoke("nobody")
    assert "alice" in err.value.remedy


def test_generated_keypair_is_private_0600_in_0700_and_never_overwritten(tmp_path):
    path = tmp_path / "newdir" / "id_ed25519"
    key = generate_keypair(path)
    assert oct(path.stat().st_mode & 0o777) == "0o600" and oct(path.parent.stat().st_mode & 0o777) == "0o700"
    assert parse_public_key((tmp_path / "newdir" / "id_ed25519.pub").read_text()).fingerprint == key.fingerprint
    with pytest.raises(KeyRejected, match="already exists"):
        generate_keypair(path)
