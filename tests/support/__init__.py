"""What the tests share: a live server (live.py), a raw SMTP wire (smtpwire.py), a DNS
server on loopback (dnsserver.py), fake MX hosts (fakemx.py), certificates (tlscerts.py)
and the dialogue runner (dialog.py). Test files stay directly under tests/."""
