"""devbox.keys: what may reach a box's authorized_keys, and what never may.

Pure logic, no test bed: keys are generated here with `cryptography`, FIDO (sk-) keys
are built by hand from their wire format, and a property test throws random and
mutated text at the parser to prove it only ever returns a key or raises KeyRejected.
"""
from __future__ import annotations

import base64
import os
import shutil
import stat
import struct
import subprocess
import warnings

import pytest
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devbox.errors import KeyRejected
from devbox.keys import (
    AUTHORIZED_KEY_OPTIONS,
    KeyStore,
    PublicKey,
    generate_keypair,
    keyset_fingerprint,
    parse_public_key,
    parse_public_keys,
    render_authorized_keys,
    validate_name,
)

# ---------------------------------------------------------------- key factories


def openssh_line(private, comment: str = "someone@laptop") -> str:
    public = private.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH).decode()
    return f"{public} {comment}".strip()


def ed25519_line(comment: str = "someone@laptop") -> str:
    return openssh_line(ed25519.Ed25519PrivateKey.generate(), comment)


def wire(*fields: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(f)) + f for f in fields)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def sk_ed25519_line(point_len: int = 32, application: bytes = b"ssh:") -> str:
    blob = wire(b"sk-ssh-ed25519@openssh.com", os.urandom(point_len), application)
    return f"sk-ssh-ed25519@openssh.com {b64(blob)} yubikey"


def sk_ecdsa_line() -> str:
    point = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        ser.Encoding.X962, ser.PublicFormat.UncompressedPoint)
    blob = wire(b"sk-ecdsa-sha2-nistp256@openssh.com", b"nistp256", point, b"ssh:")
    return f"sk-ecdsa-sha2-nistp256@openssh.com {b64(blob)} yubikey"


@pytest.fixture(scope="module")
def rsa3072_line() -> str:
    return openssh_line(rsa.generate_private_key(public_exponent=65537, key_size=3072))


def rejected(text: str, allow_many: bool = False) -> KeyRejected:
    with pytest.raises(KeyRejected) as info:
        parse_public_keys(text, allow_many=allow_many)
    return info.value


# ---------------------------------------------------------------- accepted keys


def test_ed25519_is_accepted_and_normalized():
    line = ed25519_line("alice@laptop")
    key_type, blob, _ = line.split()
    key = parse_public_key(f"\n# a comment line\n  {key_type}   {blob}   alice@laptop  \n\n")
    assert (key.type, key.blob, key.comment, key.bits) == ("ssh-ed25519", blob, "alice@laptop", 256)
    assert key.line() == f"ssh-ed25519 {blob} alice@laptop"
    assert key.with_comment("bob").line() == f"ssh-ed25519 {blob} bob"


def test_key_without_comment_is_accepted():
    key_type, blob = ed25519_line("").split()
    assert parse_public_key(f"{key_type} {blob}").line() == f"{key_type} {blob}"


def test_rsa_3072_is_accepted(rsa3072_line):
    key = parse_public_key(rsa3072_line)
    assert (key.type, key.bits) == ("ssh-rsa", 3072)


@pytest.mark.parametrize("curve,bits", [(ec.SECP256R1(), 256), (ec.SECP384R1(), 384), (ec.SECP521R1(), 521)])
def test_ecdsa_is_accepted_with_curve_bits(curve, bits):
    key = parse_public_key(openssh_line(ec.generate_private_key(curve)))
    assert (key.type, key.bits) == (f"ecdsa-sha2-nistp{bits}", bits)


def test_sk_ed25519_built_from_wire_format_is_accepted():
    key = parse_public_key(sk_ed25519_line())
    assert (key.type, key.bits, key.comment) == ("sk-ssh-ed25519@openssh.com", 256, "yubikey")


def test_sk_ecdsa_built_from_wire_format_is_accepted():
    key = parse_public_key(sk_ecdsa_line())
    assert (key.type, key.bits) == ("sk-ecdsa-sha2-nistp256@openssh.com", 256)


def test_comment_control_characters_are_dropped():
    key_type, blob, _ = ed25519_line().split()
    assert parse_public_key(f"{key_type} {blob} evil\x1b[2Jname\x00").comment == "evil[2Jname"


# ---------------------------------------------------------------- refused keys


def test_rsa_2048_is_refused():
    err = rejected(openssh_line(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    assert "2048" in err.message and "3072" in err.remedy
    assert err.exit_code == 2


def test_dsa_is_refused():
    with warnings.catch_warnings():  # cryptography deprecates serializing DSA to SSH
        warnings.simplefilter("ignore")
        line = openssh_line(dsa.generate_private_key(key_size=1024))
    err = rejected(line)
    assert "ssh-dss" in err.message


@pytest.mark.parametrize("fmt", [ser.PrivateFormat.PKCS8, ser.PrivateFormat.OpenSSH, ser.PrivateFormat.TraditionalOpenSSL])
def test_private_keys_are_refused_without_echoing_them(fmt):
    private = ed25519.Ed25519PrivateKey.generate() if fmt != ser.PrivateFormat.TraditionalOpenSSL \
        else ec.generate_private_key(ec.SECP256R1())
    text = private.private_bytes(ser.Encoding.PEM, fmt, ser.NoEncryption()).decode()
    err = rejected(text)
    assert "PRIVATE" in err.message
    body = "".join(line for line in text.splitlines() if not line.startswith("-----"))
    for chunk in (body[i : i + 8] for i in range(0, len(body) - 8, 8)):
        assert chunk not in err.one_line()


def test_putty_private_key_is_refused():
    err = rejected("PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\nPublic-Lines: 2\nAAAA\n")
    assert "PRIVATE" in err.message


def test_headerless_private_key_body_is_not_echoed():
    private = ed25519.Ed25519PrivateKey.generate()
    der = private.private_bytes(ser.Encoding.DER, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    err = rejected(b64(der))
    assert b64(der)[:12] not in err.one_line()


@pytest.mark.parametrize("prefix", [
    'command="x"', 'from="*"', 'environment="A=B"', "restrict", "no-pty",
    'restrict,command="/bin/sh"', "no-agent-forwarding,no-X11-forwarding", 'permitopen="localhost:22"',
    "cert-authority",
])
def test_authorized_keys_options_are_refused(prefix):
    err = rejected(f"{prefix} {ed25519_line()}")
    assert err.message == "authorized_keys options are not allowed in a key file"


def test_options_with_spaces_inside_quotes_are_refused():
    err = rejected(f'command="echo hi; exec sh" {ed25519_line()}')
    assert "options are not allowed" in err.message


def test_unknown_type_is_refused():
    _, blob, _ = ed25519_line().split()
    assert "unknown key type" in rejected(f"ssh-foo {blob}").message


def test_certificate_is_refused():
    _, blob, _ = ed25519_line().split()
    assert "certificates" in rejected(f"ssh-ed25519-cert-v01@openssh.com {blob}").message


def test_truncated_base64_is_refused():
    key_type, blob, _ = ed25519_line().split()
    assert "base64" in rejected(f"{key_type} {blob[:-5]}").message


def test_truncated_blob_with_valid_base64_is_refused():
    key_type, blob, _ = ed25519_line().split()
    short = b64(base64.b64decode(blob)[:-4])
    assert "truncated" in rejected(f"{key_type} {short}").message


def test_trailing_garbage_in_blob_is_refused():
    key_type, blob, _ = ed25519_line().split()
    assert "trailing" in rejected(f"{key_type} {b64(base64.b64decode(blob) + b'junk')}").message


def test_blob_with_other_type_than_label_is_refused():
    _, blob, _ = ed25519_line().split()
    err = rejected(f"ssh-rsa {blob}")
    assert "ssh-rsa" in err.message and "ssh-ed25519" in err.message


def test_ecdsa_label_on_other_curve_is_refused():
    _, blob, _ = openssh_line(ec.generate_private_key(ec.SECP256R1())).split()
    rejected(f"ecdsa-sha2-nistp384 {blob}")


def test_sk_ed25519_with_wrong_length_point_is_refused():
    assert "wrong-length" in rejected(sk_ed25519_line(point_len=31)).message


def test_sk_key_without_ssh_application_is_refused():
    rejected(sk_ed25519_line(application=b"https://example.com"))


def test_sk_ecdsa_with_invalid_point_is_refused():
    blob = wire(b"sk-ecdsa-sha2-nistp256@openssh.com", b"nistp256", b"\x04" + b"\x01" * 64, b"ssh:")
    assert "curve point" in rejected(f"sk-ecdsa-sha2-nistp256@openssh.com {b64(blob)}").message


@pytest.mark.parametrize("text", ["", "   \n\n", "# only a comment\n"])
def test_empty_text_is_refused(text):
    assert "no public key" in rejected(text).message


def test_type_without_blob_is_refused():
    assert "no base64 blob" in rejected("ssh-ed25519").message


def test_rfc4716_public_key_gets_a_conversion_hint():
    err = rejected("---- BEGIN SSH2 PUBLIC KEY ----\nAAAA\n---- END SSH2 PUBLIC KEY ----\n")
    assert "ssh-keygen -i" in err.remedy


def test_two_keys_are_refused_without_allow_many():
    err = rejected(f"{ed25519_line()}\n{ed25519_line()}\n")
    assert err.message == "several keys in one file" and "--all" in err.remedy


def test_two_keys_are_accepted_with_allow_many():
    keys = parse_public_keys(f"{ed25519_line('a')}\n# comment\n\n{sk_ecdsa_line()}\n", allow_many=True)
    assert [k.type for k in keys] == ["ssh-ed25519", "sk-ecdsa-sha2-nistp256@openssh.com"]


def test_parse_public_key_refuses_non_text():
    with pytest.raises(KeyRejected):
        parse_public_key(b"ssh-ed25519 AAAA")  # type: ignore[arg-type]


# ---------------------------------------------------------------- fingerprints


def test_fingerprint_matches_ssh_keygen(tmp_path):
    if not shutil.which("ssh-keygen"):
        pytest.skip("ssh-keygen is not installed")
    for line in (ed25519_line(), sk_ed25519_line(), sk_ecdsa_line()):
        key = parse_public_key(line)
        path = tmp_path / "k.pub"
        path.write_text(key.line() + "\n")
        out = subprocess.run(["ssh-keygen", "-lf", str(path)], capture_output=True, text=True, check=True).stdout
        assert out.split()[1] == key.fingerprint
        assert out.split()[0] == str(key.bits)


def test_keyset_fingerprint_is_order_independent_and_short():
    a, b = parse_public_key(ed25519_line()), parse_public_key(ed25519_line())
    assert keyset_fingerprint([a, b]) == keyset_fingerprint([b, a]) == keyset_fingerprint([b, a, b])
    assert len(keyset_fingerprint([a])) == 12 and keyset_fingerprint([a]) != keyset_fingerprint([a, b])


# ---------------------------------------------------------------- property test

VALID_LINE = ed25519_line("prop@test")


@st.composite
def mutated_lines(draw):
    """A valid key line with characters dropped, inserted or flipped, maybe after a prefix."""
    chars = list(VALID_LINE)
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["drop", "insert", "flip"]))
        i = draw(st.integers(0, max(len(chars) - 1, 0)))
        if op == "drop" and chars:
            del chars[i]
        elif op == "insert":
            chars.insert(i, draw(st.characters()))
        elif chars:
            chars[i] = chr(ord(chars[i]) ^ (1 << draw(st.integers(0, 6))))
    prefix = draw(st.one_of(st.just(""), st.text(max_size=30).map(lambda t: t + " "),
                            st.sampled_from(['command="x" ', "restrict ", "ssh-rsa ", "-----BEGIN ", "\ufeff"])))
    return prefix + "".join(chars)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(), mutated_lines(), st.binary(max_size=200).map(lambda b: "ssh-ed25519 " + b64(b))))
def test_parser_returns_a_key_or_raises_key_rejected(text):
    for allow_many in (False, True):
        try:
            result = parse_public_keys(text, allow_many=allow_many)
        except KeyRejected:
            continue
        assert result and all(isinstance(k, PublicKey) for k in result)


# ---------------------------------------------------------------- rendering


def test_rendered_authorized_keys_restrict_every_key_and_deduplicate(rsa3072_line):
    a = parse_public_key(ed25519_line("a"))
    b = parse_public_key(rsa3072_line)
    text = render_authorized_keys([a, b, a.with_comment("again"), b])
    header, *lines = text.splitlines()
    assert header.startswith("# managed by devbox")
    assert len(lines) == 2
    assert all(line.startswith(f"{AUTHORIZED_KEY_OPTIONS} ") for line in lines)
    assert AUTHORIZED_KEY_OPTIONS == "restrict,port-forwarding,pty"
    assert render_authorized_keys([b, a]) == render_authorized_keys([a, b])


# ---------------------------------------------------------------- names and the key store


@pytest.mark.parametrize("name", ["alice", "a", "bob.smith", "c_d-9", "x" * 32])
def test_valid_names_are_accepted(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "Alice", ".hidden", "-x", "a/b", "../etc", "x" * 33, "alice\n", "al ice"])
def test_invalid_names_are_refused_with_the_rule(name):
    with pytest.raises(KeyRejected) as info:
        validate_name(name)
    assert "a-z 0-9" in info.value.remedy


def test_keystore_add_writes_normalized_line_with_name_as_comment(tmp_path):
    store = KeyStore(tmp_path / "keys")
    line = ed25519_line("laptop-comment")
    [key] = store.add("alice", f"\n{line}\n")
    assert (tmp_path / "keys" / "alice.pub").read_text() == f"{key.type} {key.blob} alice\n"
    assert store.list() == [("alice", key)]
    assert not list((tmp_path / "keys").glob(".*tmp"))


def test_keystore_add_refuses_an_existing_name_unless_replace(tmp_path):
    store = KeyStore(tmp_path)
    store.add("alice", ed25519_line())
    with pytest.raises(KeyRejected, match="already has a key"):
        store.add("alice", ed25519_line())
    [new] = store.add("alice", ed25519_line(), replace=True)
    assert store.active_keys() == [new]


def test_keystore_add_refuses_bad_key_and_writes_nothing(tmp_path):
    store = KeyStore(tmp_path)
    with pytest.raises(KeyRejected):
        store.add("alice", "ssh-dss AAAA")
    assert not (tmp_path / "alice.pub").exists()


def test_keystore_revoke_records_fingerprint_and_active_keys_exclude_it(tmp_path):
    store = KeyStore(tmp_path)
    [alice] = store.add("alice", ed25519_line())
    [bob] = store.add("bob", ed25519_line())
    assert store.revoke("alice") == [alice.with_comment("alice")]
    assert not (tmp_path / "alice.pub").exists()
    assert store.revoked_fingerprints() == {alice.fingerprint}
    assert (tmp_path / "revoked").read_text() == f"{alice.fingerprint} alice\n"
    assert store.active_keys() == [bob]


def test_revoked_key_in_another_file_stays_inactive(tmp_path):
    store = KeyStore(tmp_path)
    line = ed25519_line()
    store.add("alice", line)
    store.revoke("alice")
    (tmp_path / "mallory.pub").write_text(line + "\n")
    assert store.active_keys() == []


def test_keystore_re_add_after_revoke_works(tmp_path):
    store = KeyStore(tmp_path)
    line = ed25519_line()
    store.add("alice", line)
    store.revoke("alice")
    [again] = store.add("alice", line)
    assert store.revoked_fingerprints() == set()
    assert store.active_keys() == [again]


def test_keystore_revoke_unknown_name_lists_known_names(tmp_path):
    store = KeyStore(tmp_path)
    store.add("alice", ed25519_line())
    with pytest.raises(KeyRejected) as info:
        store.revoke("bob")
    assert "alice" in info.value.remedy


def test_keystore_list_names_the_bad_file(tmp_path):
    store = KeyStore(tmp_path)
    store.add("alice", ed25519_line())
    (tmp_path / "broken.pub").write_text("ssh-ed25519 !!!\n")
    with pytest.raises(KeyRejected, match="broken.pub"):
        store.list()


def test_keystore_add_with_allow_many_stores_every_key(tmp_path):
    store = KeyStore(tmp_path)
    keys = store.add("ops", f"{ed25519_line()}\n{sk_ed25519_line()}\n", allow_many=True)
    assert [n for n, _ in store.list()] == ["ops", "ops"] and len(keys) == 2
    store.revoke("ops")
    assert store.revoked_fingerprints() == {k.fingerprint for k in keys}


# ---------------------------------------------------------------- generate_keypair


def test_generate_keypair_writes_0600_key_in_0700_dir_and_parsable_pub(tmp_path):
    path = tmp_path / "new" / "id_ed25519"
    key = generate_keypair(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    pub = parse_public_key((tmp_path / "new" / "id_ed25519.pub").read_text())
    assert pub.fingerprint == key.fingerprint and key.type == "ssh-ed25519"
    private = ser.load_ssh_private_key(path.read_bytes(), password=None)
    derived = private.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH).decode()
    assert parse_public_key(derived).fingerprint == key.fingerprint


def test_generate_keypair_refuses_to_overwrite(tmp_path):
    path = tmp_path / "id_ed25519"
    generate_keypair(path)
    before = path.read_bytes()
    with pytest.raises(KeyRejected, match="already exists") as info:
        generate_keypair(path)
    assert info.value.remedy
    assert path.read_bytes() == before


def test_generate_keypair_refuses_when_only_pub_exists(tmp_path):
    (tmp_path / "id_ed25519.pub").write_text("x\n")
    with pytest.raises(KeyRejected):
        generate_keypair(tmp_path / "id_ed25519")
    assert not (tmp_path / "id_ed25519").exists()
