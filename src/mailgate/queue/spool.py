"""Message content on its way into the queue: written to a file as it arrives.

A client's DATA is never held whole in memory: the listener writes each piece to a
`SpoolFile` as the session hands it over, and the queue backend reads the file back in
pieces when it stores the message (`SQLiteQueue` streams it into an SQLite blob; a
backend with a blob store of its own does the same). So a server taking 100 messages of
24 MiB at once holds a few hundred KiB per message, not 2.4 GB.

The first 256 KiB stay in memory and the file is made only when a message grows past
them: most mail is a few KiB, and a file created and removed for each such message would
cost more than the message itself.

What mailgate itself puts at the top of a message (its Received: field, and on
submission the Date: and Message-ID: a client left out) is the spool's `head`: kept in
memory apart from the body, counted in `size` and read first by `chunks`, so it can be
written last (once the header section has been seen) or rewritten (the queue id, when the
backend must choose another) without reading or copying the body.

The file is only a waiting room: the message is durable once the queue's commit is,
and the file is removed when `enqueue` returns (stored or not). Files left by a crash
are removed at the next start (`clean`). Files are created owner-only (0600), with
O_EXCL and O_NOFOLLOW, in a directory only the owner may enter.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["SpoolFile", "clean", "spool_dir"]

_BUFFER = 256 * 1024  # bytes kept in memory before they are written out
_READ = 1024 * 1024  # bytes per read when the queue copies the file into storage
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(
    os, "O_CLOEXEC", 0)


def spool_dir(data_dir: Path) -> Path:
    """`data_dir/spool`, made owner-only if it is missing."""
    path = data_dir / "spool"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def clean(directory: Path) -> int:
    """Remove the files a crashed process left (messages never acknowledged)."""
    removed = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            if entry.is_file(follow_symlinks=False) or entry.is_symlink():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
    return removed


class SpoolFile:
    """One message's content, appended in pieces; `size` counts every byte written."""

    __slots__ = ("_body", "_buffer", "_directory", "_fd", "_name", "head")

    def __init__(self, directory: Path, name: str, head: bytes = b"") -> None:
        self._directory = directory
        self._name = name
        self._fd = -1  # no file until the content outgrows the buffer
        self._buffer = bytearray()
        self._body = 0  # bytes written (to the buffer or the file)
        self.head = head  # mailgate's own fields, before the body; may be replaced

    @property
    def path(self) -> Path:
        """The file the content goes to once it outgrows the buffer (most never do: the
        path is not even built for them)."""
        return self._directory / self._name

    @property
    def size(self) -> int:
        """Every byte of the content: the head and what was written."""
        return len(self.head) + self._body

    @property
    def spilled(self) -> bool:
        """The content went to a file (it outgrew the in-memory buffer)."""
        return self._body > len(self._buffer)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append; writes to the file once the buffer holds enough (page cache speed).
        OSError (disk full, ...) leaves the spool unusable: `discard` it."""
        self._body += len(data)
        self._buffer += data
        if len(self._buffer) >= _BUFFER:
            if self._fd < 0:
                self._fd = os.open(self.path, _FLAGS, 0o600)
            self._flush()

    def _flush(self) -> None:
        view = memoryview(self._buffer)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        finally:
            view.release()
        self._buffer.clear()

    def finish(self) -> None:
        """Write what is buffered and close the file; `chunks()` then reads it back.
        Content that never outgrew the buffer stays there."""
        if self._fd >= 0:
            try:
                self._flush()
            finally:
                os.close(self._fd)
                self._fd = -1

    def chunks(self, size: int = _READ) -> Iterator[bytes]:
        """The content, head first, in pieces of at most `size` bytes (after `finish`)."""
        if self.head:
            yield self.head
        if not self.spilled:
            if self._buffer:
                yield bytes(self._buffer)
            return
        with open(self.path, "rb", buffering=0) as f:
            while piece := f.read(size):
                yield piece

    def read(self) -> bytes:
        """The whole content (for small messages and tests)."""
        return b"".join(self.chunks())

    def discard(self) -> None:
        """Close and remove the file; safe to call twice."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        spilled = self.spilled
        self._buffer = bytearray()
        self._body = 0
        self.head = b""
        if spilled:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
