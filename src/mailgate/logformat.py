"""The server's log lines: each one printable (textsafe.py), as text or as JSON.

Apart from textsafe.py so that what only needs `printable` (the queue's listings) does
not load `logging`.
"""

from __future__ import annotations

import logging

from mailgate.textsafe import json_printable, printable

__all__ = ["JSONFormatter", "SafeFormatter"]


class SafeFormatter(logging.Formatter):
    """A Formatter whose every line is printable: the message (with its arguments, where
    client strings go) on one line, tracebacks with their own line breaks only."""

    # The time of the last line formatted, by the second: a busy server logs hundreds of
    # lines a second, and strftime is a third of a line's cost.
    _stamp: tuple[int, str | None, str] = (-1, None, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is None:  # the default format shows milliseconds: nothing to share
            return super().formatTime(record, datefmt)
        second = int(record.created)
        cached_second, cached_fmt, stamp = self._stamp
        if second != cached_second or datefmt != cached_fmt:
            stamp = super().formatTime(record, datefmt)
            self._stamp = (second, datefmt, stamp)
        return stamp

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record), keep="\t")

    def formatException(self, ei: object) -> str:
        return printable(super().formatException(ei), keep="\t\n")  # type: ignore[arg-type]

    def formatStack(self, stack_info: str) -> str:
        return printable(super().formatStack(stack_info), keep="\t\n")


class JSONFormatter(logging.Formatter):
    """One JSON object per line (`--log-format json`): time (RFC 3339, UTC), level,
    logger, pid, message, and the traceback as `exc` when there is one. Client strings
    in the message are JSON-escaped, so none breaks the line or the terminal."""

    def format(self, record: logging.LogRecord) -> str:
        import datetime
        import json

        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        doc: dict[str, object] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json_printable(json.dumps(doc, ensure_ascii=False))
