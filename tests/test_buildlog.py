"""The pure parts of issue 23's build and revocation items: reading a build's output, naming
its mirrors, and choosing the start-up files changed since a key was added."""
from __future__ import annotations

from devbox.buildlog import BuildLog, apt_mirrors
from devbox.keys import installed_keys, render_authorized_keys, parse_public_key
from devbox.planted import SKEW_S, changed_since

LEGACY = """DEPRECATED: The legacy builder is deprecated and will be removed in a future release.
Step 7/22 : ARG DEVBOX_CA=
 ---> Using cache
Step 8/22 : RUN set -eux;     apt-get update;     apt-get install -y --no-install-recommends openssh-server ${DEVBOX_APT}
 ---> Running in 58cdd3705c88
\x1b[91m+ apt-get install -y openssh-server tmux=9.9
\x1b[0mReading package lists...
E: Version '9.9' for 'tmux' was not found
The command '/bin/sh -c set -eux; apt-get update' returned a non-zero code: 100
"""

BUILDKIT = """#5 [2/9] RUN set -f; sh /usr/local/lib/devbox/pip-install six
#5 1.204 WARNING: Retrying (Retry(total=4)) after connection broken by 'SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate in certificate chain (_ssl.c:992)'))'
#5 9.871 ERROR: Could not find a version that satisfies the requirement six (from versions: none)
#5 ERROR: process "/bin/sh -c set -f; sh /usr/local/lib/devbox/pip-install six" did not complete successfully: exit code: 1
"""


def test_a_legacy_failure_names_the_step_apts_words_and_the_exit_code_not_dockers_deprecation():
    log = BuildLog()
    shown = log.feed(LEGACY.encode()[:100]) + log.feed(LEGACY.encode()[100:])   # split mid-line, as chunks come
    assert shown == ["step 7/22: ARG DEVBOX_CA=", "step 8/22: apt-get install of openssh-server, tmux, the kit and `apt`"]
    error = log.failure("h1", 100)
    assert error.message == ("h1: the image build failed at step 8/22 (apt-get install of openssh-server, tmux, the kit and `apt`) "
                             "(exit 100): E: Version '9.9' for 'tmux' was not found")
    assert "apt-cache policy" in error.remedy and "DEPRECATED" not in error.one_line() and "\x1b" not in error.one_line()


def test_a_buildkit_pip_failure_behind_an_intercepting_proxy_says_tls_and_ca_bundle():
    log = BuildLog()
    log.feed(BUILDKIT)
    error = log.failure("h1")
    assert "step 2/9 (pip install of `pip`) (exit 1): a TLS certificate check failed (CERTIFICATE_VERIFY_FAILED)" in error.message
    assert "ca_bundle" in error.remedy


def test_the_tail_is_bounded_and_holds_only_the_current_step():
    log = BuildLog()
    log.feed("Step 1/2 : RUN old\nold output\n" + "Step 2/2 : RUN x\n" + "".join(f"line {i}\n" for i in range(10000)))
    assert len(log.tail) == 40 and "old output" not in log.tail and log.tail[-1] == "line 9999"


def test_the_pid_line_is_taken_not_shown():
    log = BuildLog()
    assert log.feed("devbox-build-pid 4242\nStep 1/1 : FROM x\n") == ["step 1/1: FROM x"] and log.pid == "4242"


def test_apt_mirrors_from_sources_list_and_deb822_in_order_without_repeats():
    sources = ("# deb http://commented.example/debian bookworm main\ndeb http://deb.debian.org/debian bookworm main\n"
               "deb [signed-by=/k.gpg] https://mirror.corp:8443/debian-security bookworm-security main\n"
               "Types: deb\nURIs: http://archive.ubuntu.com/ubuntu/ http://deb.debian.org/debian\n")
    assert apt_mirrors(sources) == ["deb.debian.org", "mirror.corp:8443", "archive.ubuntu.com"]


def test_a_stall_names_the_step_and_what_it_could_not_reach():
    log = BuildLog()
    log.feed("Step 8/22 : RUN set -eux; apt-get install -y x\n+ apt-get update\n")
    error = log.stalled("h1", 5, ["deb.debian.org"], "use stream")
    assert error.message == ("h1: the image build made no progress for 5 s at step 8/22 (apt-get install of openssh-server, "
                             "tmux, the kit and `apt`): the host could not reach deb.debian.org") and error.exit_code == 3


def test_changed_since_keeps_files_changed_after_the_add_less_the_clock_skew_and_all_when_unknown():
    added = 1_000_000
    listing = f"{added - SKEW_S - 1} .bashrc\n{added - SKEW_S + 1} .profile\n{added + 50} .local/bin/python\nnoise\n"
    assert [c.path for c in changed_since(listing, added)] == [".local/bin/python", ".profile"]
    assert [c.path for c in changed_since(listing, None)] == [".bashrc", ".local/bin/python", ".profile"]


def test_installed_keys_reads_back_what_render_wrote():
    key = parse_public_key("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl x").with_comment("mallory")
    assert installed_keys(render_authorized_keys([key])) == {key.fingerprint: "mallory"}


def test_a_ca_bundle_is_in_the_image_tag_by_its_certificates_not_its_comments_and_not_in_the_spec_hash(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    import datetime

    from devbox.config import BoxSpec
    from devbox.image import content_tag

    def cert(name: str) -> str:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, name)])
        now = datetime.datetime(2026, 1, 1)
        built = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                 .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
        return built.public_bytes(serialization.Encoding.PEM).decode()

    one, two = cert("proxy-ca"), cert("other-ca")
    paths = {}
    for label, text in (("plain", one), ("commented", f"# our proxy\n{one}\n\n"), ("other", two)):
        paths[label] = tmp_path / f"{label}.pem"
        paths[label].write_text(text)
    tag = {label: content_tag(BoxSpec("h", base_image="b", ca_bundle=str(path)).image) for label, path in paths.items()}
    assert tag["plain"] == tag["commented"] != tag["other"] != content_tag(BoxSpec("h", base_image="b").image)
    assert BoxSpec("h", ca_bundle=str(paths["plain"])).spec_hash(2200, "t") == BoxSpec("h").spec_hash(2200, "t")
