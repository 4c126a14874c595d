"""A team's CA certificates for the image build (`ca_bundle` in devbox.toml).

Behind a TLS-intercepting proxy, pip (and apt or curl over https) in the build fail their
certificate checks unless the image trusts the proxy's CA. The file is read on this
machine, held to certificates only (never a private key), and normalised, so comments or
re-ordering of whitespace do not change the image tag.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

MAX_BYTES = 64 << 10      # it travels as a build argument (the engine's API takes it in a URL)


@lru_cache(maxsize=8)
def read_ca_bundle(path: str) -> str:
    """The PEM certificates of `path`, re-encoded; ValueError says what is wrong with it."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path} ({exc.strerror or exc.__class__.__name__})") from None
    if b"PRIVATE KEY" in data:
        raise ValueError(f"{path} holds a private key: give the CA's certificate only")
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)") from None
    pem = "".join(cert.public_bytes(Encoding.PEM).decode() for cert in certificates)
    if len(pem) > MAX_BYTES:
        raise ValueError(f"{path} is over {MAX_BYTES >> 10} KiB of certificates: give only the CAs the build needs")
    return pem
