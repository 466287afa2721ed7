"""DKIM (RFC 6376, every signature) and ARC chain validation (RFC 8617), with dkimpy.

DKIM signatures are verified by `dkimverify.Verifier`: dkimpy for the header section
and the tags, the body hashes streamed (`dkimbody.py`), RSA by OpenSSL. ARC (only on
messages that carry an ARC-Seal) is dkimpy's own, on the whole message.

The keys come through the message's `DNSBridge` (`lookup.py`). dkimpy says why a
signature failed only to a logger, so each check gets a logger of its own whose
messages become the result's reason (the comment in Authentication-Results).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import dkim

from mailgate.server.authcheck.dkimverify import HeaderTooLong, Verifier, split_message
from mailgate.server.authcheck.lookup import DNSBridge, DNSTempError

__all__ = ["ARCResult", "DKIMResult", "arc_seal", "check_arc", "check_dkim",
           "check_dkim_parts", "has_arc"]

# A stranger may put any number of signatures on a message, each costing a DNS lookup
# and a public-key operation: only the first ones are verified (Authentication-Results
# says how many were left out).
MAX_SIGNATURES = 10
MIN_KEY_BITS = 1024  # RFC 8301 3.2: shorter RSA keys are not accepted


@dataclass(frozen=True, slots=True)
class DKIMResult:
    """One signature: `result` pass, fail, policy (rsa-sha1, RFC 8301), temperror or
    permerror (RFC 8601 2.7.1); `domain` its d=, `selector` s=, `algorithm` a=, `b` the
    start of b=."""

    result: str
    domain: str = ""
    selector: str = ""
    algorithm: str = ""
    b: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ARCResult:
    """`result` pass, fail or none (RFC 8617 4.4), `instances` the ARC sets found."""

    result: str
    instances: int = 0
    reason: str = ""


class _Reasons(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.texts) < 4:
            self.texts.append(record.getMessage()[:200])


def _logger() -> tuple[logging.Logger, _Reasons]:
    """A logger of one's own, outside logging's registry, so the reasons stay here."""
    log = logging.Logger("mailgate.dkimpy", logging.INFO)
    reasons = _Reasons()
    log.addHandler(reasons)
    log.propagate = False
    return log, reasons


def _dnsfunc(bridge: DNSBridge):  # type: ignore[no-untyped-def]  # dkimpy's callback
    def txt(name: bytes, timeout: float = 5) -> bytes | None:
        records = bridge.txt(name.decode("ascii", "replace").rstrip("."))
        return records[0] if records else None  # RFC 6376 3.6.2.2: several are undefined
    return txt


def _text(fields: dict[bytes, bytes], tag: bytes, limit: int = 255) -> str:
    return fields.get(tag, b"").decode("ascii", "replace")[:limit]


def check_dkim(bridge: DNSBridge, message: bytes) -> tuple[list[DKIMResult], int]:
    """Every DKIM-Signature of `message` (up to MAX_SIGNATURES), and how many there were."""
    try:
        header, body = split_message([message])
    except HeaderTooLong as exc:
        return [DKIMResult("permerror", reason=str(exc))], 1
    return check_dkim_parts(bridge, header, body)


def check_dkim_parts(bridge: DNSBridge, header: bytes, body: Iterable[bytes]
                     ) -> tuple[list[DKIMResult], int]:
    """`check_dkim` of a message split by `dkimverify.split_message`: the body is read
    (once, as it is iterated) only when there is a signature to verify."""
    log, reasons = _logger()
    try:
        signer = Verifier(header, log, MIN_KEY_BITS)
    except Exception as exc:  # the message cannot even be parsed
        return [DKIMResult("permerror", reason=f"cannot parse the message: {exc}")], 1
    count = len(signer.sig_values)
    if count:
        try:
            signer.hash_bodies(body, min(count, MAX_SIGNATURES))
        except OSError as exc:  # the spool file cannot be read back
            return [DKIMResult("temperror", reason=f"cannot read the message: {exc}")], 1
    return verify_each(signer, count, bridge, reasons), count


def verify_each(signer: dkim.DKIM, count: int, bridge: DNSBridge, reasons: _Reasons
                ) -> list[DKIMResult]:
    """The first MAX_SIGNATURES of the `count` signatures `signer` holds, each verified
    and told as a DKIMResult (its reasons are what dkimpy logged to `reasons`)."""
    results: list[DKIMResult] = []
    for idx in range(min(count, MAX_SIGNATURES)):
        reasons.texts.clear()
        signer.signature_fields = {}
        try:
            ok = signer.verify(idx=idx, dnsfunc=_dnsfunc(bridge))
            result = "pass" if ok else "fail"
        except DNSTempError as exc:
            result, reasons.texts[:] = "temperror", [str(exc)]
        except dkim.DKIMException as exc:  # a malformed signature or key
            result, reasons.texts[:] = "permerror", [str(exc)]
        except Exception as exc:  # hostile input must not crash the check
            result, reasons.texts[:] = "permerror", [f"cannot verify: {exc}"]
        if result == "fail" and not reasons.texts:
            reasons.texts.append("the signature or the body hash does not match")
        fields = signer.signature_fields or {}
        if result == "pass" and fields.get(b"a", b"").strip().lower() == b"rsa-sha1":
            # RFC 8301 3.1: verifiers must not consider RSA-SHA1 signatures valid.
            result = "policy"
            reasons.texts[:] = ["a valid rsa-sha1 signature, which RFC 8301 forbids "
                                "to accept"]
        results.append(DKIMResult(
            result, domain=_text(fields, b"d").lower(), selector=_text(fields, b"s"),
            algorithm=_text(fields, b"a", 32), b=_text(fields, b"b", 8),
            reason="" if result == "pass" else "; ".join(reasons.texts)))
    return results


def has_arc(message: bytes) -> bool:
    """Does the header section of `message` hold an ARC-Seal field?"""
    end = message.find(b"\r\n\r\n")
    head = (message if end < 0 else message[:end + 2]).lower()
    return head.startswith(b"arc-seal:") or b"\narc-seal:" in head


def check_arc(bridge: DNSBridge, message: bytes) -> ARCResult:
    """The ARC chain's validation status (RFC 8617 5.2): pass, fail or none."""
    if not has_arc(message):
        return ARCResult("none")  # the common case, without parsing the message again
    log, reasons = _logger()
    try:
        arc = dkim.ARC(message, logger=log, minkey=MIN_KEY_BITS)
        instances = arc.sorted_arc_headers()[0]
        if instances == 0:
            return ARCResult("none")
        cv, _results, why = arc.verify(dnsfunc=_dnsfunc(bridge))
    except DNSTempError as exc:
        # RFC 8617 has no temperror; the chain cannot be called valid.
        return ARCResult("fail", reason=f"temporary DNS error: {exc}")
    except Exception as exc:
        return ARCResult("fail", reason=f"cannot validate: {exc}")
    if cv == dkim.CV_Pass:
        return ARCResult("pass", instances)
    reason = str(why) if why else "; ".join(reasons.texts)
    return ARCResult("fail", instances, reason[:200])


def arc_seal(message: bytes, authserv_id: str, domain: str, selector: str,
             private: bytes) -> tuple[bytes, str]:
    """The ARC set (RFC 8617 4.1: ARC-Seal, ARC-Message-Signature,
    ARC-Authentication-Results) to put on `message`, which starts with our own
    Authentication-Results field (its `arc=` result is the chain status the seal
    records), and why there is none when it cannot be made."""
    log, reasons = _logger()
    try:
        lines = dkim.arc_sign(message, selector.encode("ascii"), domain.encode("ascii"),
                              private, authserv_id.encode("ascii"), logger=log)
    except Exception as exc:  # e.g. the 50-instance limit of RFC 8617 4.2.1
        return b"", f"cannot seal: {exc}"
    if not lines:
        return b"", "; ".join(reasons.texts) or "nothing to seal"
    return b"".join(lines), ""
