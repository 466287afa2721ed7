"""mailgate: a mail transfer agent that speaks SMTP exactly and explains every reply."""

__version__ = "0.1.0"
