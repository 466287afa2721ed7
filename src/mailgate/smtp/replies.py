"""The replies the protocol itself gives, as values (policy replies live in the server).

Each is the basic code RFC 5321 (or the extension's RFC) prescribes and the enhanced
code RFC 3463 / RFC 5248 registers for it.
"""

from __future__ import annotations

from mailgate.codes.reply import Reply

R = Reply.make

# Generic success
OK = R(250, "2.0.0", "Ok")
SENDER_OK = R(250, "2.1.0", "Sender ok")
RECIPIENT_OK = R(250, "2.1.5", "Recipient ok")
RESET_OK = R(250, "2.0.0", "Reset state")
NOOP_OK = R(250, "2.0.0", "Ok")
VRFY_CANNOT = R(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
HELP = R(214, "2.0.0", "See RFC 5321; commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY "
                       "HELP STARTTLS AUTH")
START_DATA = R(354, None, "End data with <CR><LF>.<CR><LF>")
READY_TLS = R(220, "2.0.0", "Ready to start TLS")
AUTH_OK = R(235, "2.7.0", "Authentication successful")

# Sequence and syntax (RFC 5321 4.2.4, 4.3.2)
UNKNOWN_COMMAND = R(500, "5.5.1", "Command unrecognized")
NOT_IMPLEMENTED = R(502, "5.5.1", "Command not implemented")
LINE_TOO_LONG = R(500, "5.5.2", "Line too long")
BARE_LF_COMMAND = R(500, "5.5.2", "Commands must end with <CR><LF>, not a bare line feed")
BAD_UTF8_COMMAND = R(500, "5.5.2", "Command is not valid UTF-8")
NEED_HELO = R(503, "5.5.1", "Send EHLO or HELO first")
NESTED_MAIL = R(503, "5.5.1", "Sender already specified")
NEED_MAIL = R(503, "5.5.1", "Need MAIL before RCPT")
NEED_MAIL_FOR_DATA = R(503, "5.5.1", "Need MAIL before DATA")
NEED_RCPT = R(503, "5.5.1", "Need RCPT before DATA")
NO_VALID_RECIPIENTS = R(554, "5.5.1", "No valid recipients")
BDAT_NO_RECIPIENTS = R(503, "5.5.1", "No valid recipients; chunk discarded")
DATA_AFTER_BDAT = R(503, "5.5.1", "DATA cannot follow BDAT in one transaction")
BDAT_AFTER_LAST = R(503, "5.5.1", "BDAT LAST already received")
NO_ARGS_ALLOWED = R(501, "5.5.4", "This command takes no arguments")
TOO_MANY_RECIPIENTS = R(452, "4.5.3", "Too many recipients")
TOO_MANY_ERRORS = R(421, "4.7.0", "Too many errors, closing connection")
SHUTDOWN = R(421, "4.3.2", "Service shutting down, closing connection")
TIMEOUT = R(421, "4.4.2", "Timeout exceeded, closing connection")
CLOSING = R(221, "2.0.0", "Bye")

# Message size (RFC 1870)
SIZE_EXCEEDED = R(552, "5.3.4", "Message size exceeds fixed maximum message size")

# DATA content (RFC 5321 4.5.3.1.6, 2.3.8)
DATA_LINE_TOO_LONG = R(554, "5.6.0", "Message has a line longer than 1000 octets (RFC 5321)")
DATA_BARE_LF = R(554, "5.6.0", "Message contains a bare CR or LF; lines must end with <CR><LF>")

# STARTTLS (RFC 3207)
TLS_NOT_AVAILABLE = R(502, "5.5.1", "STARTTLS not available")
TLS_ALREADY = R(503, "5.5.1", "TLS already active")

# AUTH (RFC 4954)
# 502, not 503: AUTH is recognised but not implemented here (RFC 5321 4.2.4).
AUTH_NOT_ENABLED = R(502, "5.5.1", "Authentication not enabled")
AUTH_ALREADY = R(503, "5.5.1", "Already authenticated")
AUTH_IN_TRANSACTION = R(503, "5.5.1", "AUTH not allowed during a mail transaction")
AUTH_UNKNOWN_MECHANISM = R(504, "5.5.4", "Unrecognized authentication mechanism")
AUTH_CANCELLED = R(501, "5.0.0", "Authentication cancelled")
AUTH_BAD_BASE64 = R(501, "5.5.2", "Cannot decode the response (bad base64)")
AUTH_MALFORMED = R(501, "5.5.2", "Malformed authentication response")
AUTH_LINE_TOO_LONG = R(500, "5.5.6", "Authentication exchange line is too long")
AUTH_NEEDS_TLS = R(538, "5.7.11", "Encryption required for requested authentication mechanism")
AUTH_FAILED = R(535, "5.7.8", "Authentication credentials invalid")
# RFC 4954 6: the password database could not be asked (Dovecot's auth unreachable).
AUTH_TEMPFAIL = R(454, "4.7.0", "Temporary authentication failure")
