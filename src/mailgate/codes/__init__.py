"""What SMTP replies mean: the reply value, the code registry, explanations, comparisons.

This package imports nothing else of mailgate; everything else imports it. Heavy parts
(the data, rich) load only when first used, so `from mailgate.codes import Reply` is cheap.
"""

from mailgate.codes.reply import (
    EnhancedCode,
    Reply,
    ReplyClass,
    ReplyError,
    Subject,
    parse_basic_code,
    parse_enhanced_code,
    parse_reply,
)

__all__ = [
    "EnhancedCode",
    "Reply",
    "ReplyClass",
    "ReplyError",
    "Subject",
    "parse_basic_code",
    "parse_enhanced_code",
    "parse_reply",
]
