"""Inbound authentication: SPF, DKIM, DMARC and ARC for mail from strangers.

Applied to every client that is neither authenticated nor in `[relay] networks`
(`Policy.checks_inbound`), as `[auth_checks]` switches them:

- `spfcheck.py`: SPF (RFC 7208) with pyspf, at MAIL FROM;
- `dkimcheck.py`: every DKIM signature (RFC 6376) and the ARC chain (RFC 8617), dkimpy;
- `dkimverify.py`: the DKIM verifier dkimcheck uses: dkimpy for the header section, the
  body hashes streamed from the spool (`server/dkimbody.py`), RSA by OpenSSL;
- `dmarc.py`: DMARC (RFC 7489) on the public suffix list of `publicsuffixlist`;
- `results.py`: the Authentication-Results field (RFC 8601), and the removal of forged
  ones claiming this server's authserv-id while the message streams in;
- `lookup.py`: every DNS lookup through mailgate's resolver (`[dns] nameservers`),
  bounded in number and time;
- `verify.py`: the decisions and their replies.

docs/authentication.md ("Verifying") says what an operator sees and sets. Import the
modules themselves: this package loads pyspf and dkimpy only where they are used.
"""

