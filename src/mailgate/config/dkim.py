"""[dkim]: the keys mailgate signs outgoing mail with (RFC 6376, RFC 8463).

One table per signing domain, or a list of tables for dual signing (an Ed25519 key
beside an RSA one, as RFC 8463 recommends):

    [dkim."example.org"]
    selector = "s2026"
    key_file = "/etc/mailgate/dkim/example.org.s2026.key"
    algorithm = "rsa-sha256"        # or "ed25519-sha256"

    [[dkim."example.net"]]           # two signatures on each message
    selector = "r2026"
    key_file = "example.net.rsa.key"
    [[dkim."example.net"]]
    selector = "e2026"
    key_file = "example.net.ed25519.key"
    algorithm = "ed25519-sha256"

Key files are read once, when the configuration is loaded: `serve` started as root
loads its configuration before it drops to `[server] user`, so a key may be readable by
root only (0600 root:root), as it should be. A file that is missing, not a private key,
of the wrong kind for `algorithm`, or an RSA key under 1024 bits (RFC 8301) is a
configuration error naming the file. One this process may not read (permission denied)
is kept as `unreadable`: other commands, run by users who may not read keys, still
work, and `serve` refuses to start (`unreadable_keys`). `reload_keys` reads the same
files again (`serve` on SIGHUP: a key rotated in place); one that no longer loads keeps
the key read before.

Accepted key files: PEM (PKCS#1 "RSA PRIVATE KEY" or PKCS#8 "PRIVATE KEY", RSA or
Ed25519, as openssl and opendkim-genkey write them) and, for Ed25519, the base64 of the
32-byte seed (dkimpy's dknewkey and `mailgate dkim keygen`).

`keys_for(config.dkim, domain)` is what signing (and ARC sealing) asks: the keys for
a domain, or for its nearest parent that has some. `Config.dkim` maps each signing
domain to its `DKIMKey`s, the private key already read.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import cast

from mailgate.config.dkimkey import (
    ALGORITHMS,
    MIN_RSA_BITS,
    DKIMAlgorithm,
    DKIMKey,
    keys_for,
    public_record,
    unreadable_keys,
    zone_line,
)
from mailgate.config.reader import _choice, _key, _Reader, _string
from mailgate.config.syntax import _Bad, _domain

__all__ = ["ALGORITHMS", "DKIM_KEYS", "DKIMAlgorithm", "DKIMKey", "generate_key", "keys_for",
           "load_key", "public_record", "reload_keys", "renew_keys", "unreadable_keys",
           "zone_line"]

DKIM_KEYS = ("selector", "key_file", "algorithm")
_SELECTOR_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                          r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\Z")


# --- reading the keys ---------------------------------------------------------------


def load_key(path: Path, algorithm: DKIMAlgorithm, domain: str = "", selector: str = ""
             ) -> DKIMKey:
    """Read and check a private key file; `_Bad` says what is wrong, naming the file."""
    try:
        data = path.read_bytes()
    except PermissionError as exc:
        # Not this process's to read: fine for a command that does not sign (checked
        # again where it matters: `serve` will not start with such a key).
        return DKIMKey(domain, selector, algorithm, path, b"", "", 0,
                       unreadable=exc.strerror or str(exc))
    except OSError as exc:
        raise _Bad(f"cannot read the key file {path}: {exc.strerror or exc}") from None
    if len(data) > 64 * 1024:
        raise _Bad(f"{path} is not a DKIM private key (over 64 KiB)")
    kind, private, public, bits = _parse_key(data, path)
    if kind != algorithm.partition("-")[0]:
        other = "rsa-sha256" if kind == "rsa" else "ed25519-sha256"
        raise _Bad(f"{path} holds an {'RSA' if kind == 'rsa' else 'Ed25519'} key, but "
                   f'algorithm is "{algorithm}"; set algorithm = "{other}"')
    if kind == "rsa" and bits < MIN_RSA_BITS:
        raise _Bad(f"{path} is a {bits}-bit RSA key; DKIM needs at least {MIN_RSA_BITS} "
                   "bits (RFC 8301) and 2048 is what receivers expect: make a new one "
                   "with `mailgate dkim keygen`")
    return DKIMKey(domain, selector, algorithm, path, private, public, bits)


def reload_keys(table: Mapping[str, tuple[DKIMKey, ...]]
                ) -> tuple[Mapping[str, tuple[DKIMKey, ...]], list[str]]:
    """`table`'s keys read again from the files it names (same domains, selectors and
    algorithms): a file rotated in place gives its new key. A file that does not load
    (missing, not a key, unreadable) keeps the key read before. Returns the new table and
    one sentence per file that did not load, naming it."""
    out: dict[str, tuple[DKIMKey, ...]] = {}
    problems: list[str] = []
    for domain, keys in table.items():
        fresh: list[DKIMKey] = []
        for key in keys:
            try:
                new = load_key(key.key_file, key.algorithm, key.domain, key.selector)
            except _Bad as exc:
                problems.append(f"dkim.{domain}: {exc}")
                new = key
            if new.unreadable is not None:
                problems.append(f"dkim.{domain}: cannot read the key file {key.key_file}: "
                                f"{new.unreadable}")
                new = key
            fresh.append(new)
        out[domain] = tuple(fresh)
    return MappingProxyType(out), problems


def renew_keys(old: Mapping[str, tuple[DKIMKey, ...]], new: Mapping[str, tuple[DKIMKey, ...]]
               ) -> tuple[Mapping[str, tuple[DKIMKey, ...]], list[str]]:
    """The [dkim] table of the configuration read again (SIGHUP): its domains, selectors
    and key files as it names them now, so a new selector or signing domain is used and
    one taken out is not. A key file this process may not read keeps the key in service
    under the same domain and selector; with none in service, that selector is left
    out. Returns the table and one sentence per key file not read, naming it."""
    before = {(key.domain, key.selector): key for keys in old.values() for key in keys}
    out: dict[str, tuple[DKIMKey, ...]] = {}
    problems: list[str] = []
    for domain, keys in new.items():
        fresh: list[DKIMKey] = []
        for key in keys:
            previous = before.get((key.domain, key.selector))
            if key.unreadable is None:
                fresh.append(key)
                continue
            cannot = f"dkim.{domain}: cannot read the key file {key.key_file}: {key.unreadable}"
            if previous is not None:
                problems.append(f"kept the DKIM key in service: {cannot}")
                fresh.append(previous)
            else:
                problems.append(f"left out the new DKIM selector {key.selector!r}: {cannot}")
        if fresh:
            out[domain] = tuple(fresh)
    return MappingProxyType(out), problems


def _parse_key(data: bytes, path: Path) -> tuple[str, bytes, str, int]:
    """(kind, private as dkimpy wants it, public p= value, bits)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        if b"ENCRYPTED" in text.split(b"\n", 2)[0] or b"Proc-Type: 4,ENCRYPTED" in text:
            raise _Bad(f"{path} is encrypted with a passphrase; DKIM keys are read "
                       "unattended at startup: store it without one, readable by root only")
        try:
            key = serialization.load_pem_private_key(text, password=None)
        except (ValueError, TypeError) as exc:
            raise _Bad(f"{path} is not a readable PEM private key ({exc})") from None
        if isinstance(key, rsa.RSAPrivateKey):
            private = key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.TraditionalOpenSSL,
                                        serialization.NoEncryption())
            spki = key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            return "rsa", private, base64.b64encode(spki).decode(), key.key_size
        if isinstance(key, ed25519.Ed25519PrivateKey):
            seed = key.private_bytes(serialization.Encoding.Raw,
                                     serialization.PrivateFormat.Raw,
                                     serialization.NoEncryption())
            return _ed25519(seed)
        raise _Bad(f"{path} holds a key of type {type(key).__name__.removesuffix('PrivateKey')}; "
                   "DKIM signs with RSA (rsa-sha256) or Ed25519 (ed25519-sha256)")
    try:
        raw = base64.b64decode(b"".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) in (32, 64):  # a seed, or libsodium's seed + public key
        return _ed25519(raw[:32])
    raise _Bad(f"{path} is not a private key: expected PEM (-----BEGIN ... PRIVATE "
               "KEY-----) or, for Ed25519, the base64 of its 32-byte seed")


def _ed25519(seed: bytes) -> tuple[str, bytes, str, int]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    public = ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519", base64.b64encode(seed), base64.b64encode(public).decode(), 256


def generate_key(algorithm: DKIMAlgorithm, bits: int = 2048) -> bytes:
    """A new private key file's content: PKCS#1 PEM for RSA (as opendkim-genkey writes
    it), the base64 of the 32-byte seed for Ed25519 (as dkimpy's dknewkey does)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    if algorithm == "ed25519-sha256":
        seed = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
            serialization.NoEncryption())
        return base64.b64encode(seed) + b"\n"
    if bits < MIN_RSA_BITS:
        raise _Bad(f"an RSA key needs at least {MIN_RSA_BITS} bits (RFC 8301)")
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def parse_key(data: bytes, algorithm: DKIMAlgorithm, path: Path) -> DKIMKey:
    """`load_key` for content in hand (a key just made)."""
    kind, private, public, bits = _parse_key(data, path)
    if kind != algorithm.partition("-")[0]:
        raise _Bad(f"{path} is not an {algorithm} key")
    return DKIMKey("", "", algorithm, path, private, public, bits)


# --- the [dkim] section -------------------------------------------------------------


def _selector(value: object) -> str:
    text = _string(value)
    if not _SELECTOR_RE.match(text) or len(text) > 63 * 4:
        raise _Bad('is not a selector: letters, digits, hyphens and dots, like "s2026"')
    return text


def _dkim(t: Mapping[str, object], r: _Reader) -> Mapping[str, tuple[DKIMKey, ...]]:
    """[dkim."domain"] tables (or lists of them) -> domain -> its keys, each loaded."""
    out: dict[str, tuple[DKIMKey, ...]] = {}
    for name, value in t.items():
        try:
            domain = _domain(name)
        except _Bad as exc:
            r.report(_key("dkim", name), value, f"the key {exc}; [dkim] keys are the "
                     'signing domains, like [dkim."example.org"]')
            continue
        if domain in out:
            r.report_key(_key("dkim", name), f"repeats the signing domain {domain}")
            continue
        tables = value if isinstance(value, list) else [value]
        if not tables:
            r.report(_key("dkim", name), value, "must have at least one key table")
            continue
        keys: list[DKIMKey] = []
        seen: dict[str, int] = {}
        for index, table in enumerate(tables):
            path: tuple[str | int, ...] = (("dkim", name, index) if isinstance(value, list)
                                           else ("dkim", name))
            key = _dkim_key(table, path, domain, r)
            if key is None:
                continue
            if key.selector.lower() in seen:
                r.report(_key(*path, "selector"), key.selector,
                         f"is already used for {domain} by entry {seen[key.selector.lower()]}"
                         "; each key of a domain needs a selector of its own")
                continue
            seen[key.selector.lower()] = index
            keys.append(key)
        out[domain] = tuple(keys)
    return MappingProxyType(out)


def _dkim_key(table: object, path: tuple[str | int, ...], domain: str, r: _Reader
              ) -> DKIMKey | None:
    if not isinstance(table, dict):
        r.report(_key(*path), table, "must be a table with selector and key_file (and "
                 'algorithm, "rsa-sha256" or "ed25519-sha256")')
        return None
    r.check_keys(table, path, DKIM_KEYS)
    for name in ("selector", "key_file"):
        if name not in table:
            r.report_key(_key(*path, name), "missing; each [dkim] entry needs selector "
                         'and key_file, like selector = "s2026"')
    selector = r.get(table, path, "selector", _selector, None)
    key_path = r.get(table, path, "key_file", r.path, None)
    algorithm = r.get(table, path, "algorithm", _choice(ALGORITHMS), "rsa-sha256")
    if selector is None or key_path is None or not r.ok(_key(*path, "algorithm")):
        return None
    try:
        return load_key(key_path, cast(DKIMAlgorithm, algorithm), domain, selector)
    except _Bad as exc:
        r.report(_key(*path, "key_file"), table["key_file"], str(exc))
        return None
