"""DKIM key pairs for the gateway's own signatures, and the DNS records to publish.

``attachment-gateway dkim keygen`` writes an RSA 2048 private key (PEM,
mode 0600: only the gateway's user reads it) and prints the TXT records:
the DKIM key record ``SELECTOR._domainkey.DOMAIN`` and, when an SRS domain
is given, that domain's SPF record naming the gateway's addresses.
"""
from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


@dataclass(frozen=True)
class KeyPair:
    """A new key: the private key file written and the public key record."""

    private_path: Path
    dns_name: str
    dns_value: str


def generate(domain: str, selector: str, out_dir: Path, bits: int = 2048) -> KeyPair:
    """Write ``SELECTOR.private`` (PEM, 0600) and ``SELECTOR.txt`` (the
    record) in ``out_dir``; an existing private key is never overwritten."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    out_dir.mkdir(parents=True, exist_ok=True)
    private_path = out_dir / f"{selector}.private"
    # O_EXCL: a key in use is never replaced by accident; 0600 from the start.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    name = f"{selector}._domainkey.{domain}"
    value = f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode('ascii')}"
    (out_dir / f"{selector}.txt").write_text(zone_line(name, value))
    return KeyPair(private_path, name, value)


def spf_record(addresses: list[str]) -> str:
    """An SPF record authorising exactly ``addresses`` (IPv4 or IPv6), hard fail for the rest."""
    mechs = " ".join(("ip6:" if ":" in a else "ip4:") + a for a in addresses)
    return f"v=spf1 {mechs} -all" if mechs else "v=spf1 -all"


def zone_line(name: str, value: str) -> str:
    """A zone-file TXT line, split into 255-character strings as DNS requires."""
    parts = " ".join(f'"{value[i:i + 255]}"' for i in range(0, len(value), 255))
    return f"{name}. IN TXT ( {parts} )\n"
