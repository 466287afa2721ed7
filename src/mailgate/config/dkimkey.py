"""A DKIM signing key as the configuration holds it ([dkim], read by dkim.py), and the
questions asked of it: which keys sign for a domain, what record publishes one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mailgate.config.syntax import _lookup_domain

__all__ = ["ALGORITHMS", "MIN_RSA_BITS", "DKIMAlgorithm", "DKIMKey", "keys_for",
           "public_record", "unreadable_keys", "zone_line"]

DKIMAlgorithm = Literal["rsa-sha256", "ed25519-sha256"]
ALGORITHMS: tuple[DKIMAlgorithm, ...] = ("rsa-sha256", "ed25519-sha256")
MIN_RSA_BITS = 1024  # RFC 8301 3.2: signers MUST use at least 1024 bits


@dataclass(frozen=True, slots=True)
class DKIMKey:
    """One signing key: d=`domain`, s=`selector`, a=`algorithm`.

    `private` is in the form dkimpy signs with (PKCS#1 PEM for RSA, the base64 seed for
    Ed25519); `public` is the p= value of the DNS record that must match it."""

    domain: str  # lower-case A-label
    selector: str
    algorithm: DKIMAlgorithm
    key_file: Path
    private: bytes = field(repr=False)
    public: str  # base64, as published in p=
    bits: int  # RSA modulus size; 256 for Ed25519
    # Why the key file could not be read by this process (permission denied), when it
    # could not: a command run by a user who may not read the key (`mailgate queue` as
    # the mail user, sendmail) still loads the configuration; `serve` refuses to start
    # (`unreadable_keys`). The key is then empty and never used.
    unreadable: str | None = None

    @property
    def record_name(self) -> str:
        """`selector._domainkey.domain`, where the public key is published."""
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def key_type(self) -> str:
        """The k= value: "rsa" or "ed25519"."""
        return "rsa" if self.algorithm == "rsa-sha256" else "ed25519"


def keys_for(table: Mapping[str, tuple[DKIMKey, ...]], domain: str
             ) -> tuple[DKIMKey, ...]:
    """The signing keys for mail from `domain` in `table` (`Config.dkim`): its own
    [dkim] entry, else that of its nearest parent domain (d=example.org aligns with
    From: a.example.org under relaxed DMARC alignment); () when none."""
    name = _lookup_domain(domain)
    while name:
        found = table.get(name)
        if found:
            return tuple(key for key in found if key.unreadable is None)
        _, dot, name = name.partition(".")
        if not dot:
            break
    return ()


def unreadable_keys(table: Mapping[str, tuple[DKIMKey, ...]]) -> list[str]:
    """One sentence per key file this process could not read (for `serve`'s start)."""
    return [f"dkim.{key.domain}: cannot read the key file {key.key_file}: {key.unreadable} "
            "(the keys are read before root is dropped: start serve as root, or let its "
            "user read the file)"
            for keys in table.values() for key in keys if key.unreadable is not None]


def public_record(key: DKIMKey) -> str:
    """The TXT record's text for the key: "v=DKIM1; k=rsa; p=..." (RFC 6376 3.6.1)."""
    return f"v=DKIM1; k={key.key_type}; p={key.public}"


def zone_line(name: str, record: str) -> str:
    """One zone-file line publishing `record` at `name`: `NAME. IN TXT "..." "..."`, the
    text split into quoted strings of at most 255 characters (RFC 1035 3.3.14; receivers
    join them, RFC 6376 3.6.2.2)."""
    parts = [record[i:i + 255] for i in range(0, len(record), 255)] or [""]
    return f"{name.rstrip('.')}. IN TXT " + " ".join(f'"{part}"' for part in parts)
