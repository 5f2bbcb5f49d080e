"""Reading input files safely: regular files only, never more than a bound, never hanging.

The one reader for files a user or a plan names (desired-state files now; plan files and
fleet files can use it too). ``read_bounded`` refuses what is not a regular file (a FIFO named
``x.yaml`` would block ``open`` for ever; ``/dev/zero`` would be read until memory runs out)
without reading a byte of it, and reads at most ``limit`` bytes. Its messages never quote the
file's content, so a token file reached by mistake is not echoed.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from reconciler.errors import InputError, Problem


class FileReadError(InputError):
    """A file that cannot be read as an input: not regular, too large, or unreadable.

    Carries one ``Problem`` naming the file as the caller showed it (``what`` is the kind of
    file, for the message: "file", "plan file").
    """


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"  # pragma: no cover - every other st_mode kind is listed above


def _size_text(limit: int) -> str:
    if limit % (1024 * 1024) == 0:
        return f"{limit // (1024 * 1024)} MiB"
    if limit % 1024 == 0:
        return f"{limit // 1024} KiB"
    return f"{limit:,} bytes"


def read_bounded(path: Path, limit: int, what: str, display: str | None = None) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them.

    Raises ``FileReadError`` (an ``InputError``) if ``path`` is missing, unreadable, not a
    regular file (FIFO, device, socket, directory) or larger than ``limit``. The file is opened
    with ``O_NONBLOCK`` so that a FIFO swapped in between the check and the open cannot block,
    and its type is checked again on the open descriptor (``fstat``), which is what is read.
    """
    shown = display if display is not None else str(path)

    def fail(message: str) -> FileReadError:
        return FileReadError([Problem(shown, message)])

    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        before = os.stat(path)
    except FileNotFoundError:
        raise fail("no such file or directory") from None
    except OSError as error:
        raise fail(f"cannot read: {error.strerror or error.__class__.__name__}") from None
    if stat.S_ISDIR(before.st_mode):
        raise fail("is a directory")
    if not stat.S_ISREG(before.st_mode):
        raise fail(f"is {_kind(before.st_mode)}, not a regular {what}: not read")
    if before.st_size > limit:
        raise fail(f"{what} is larger than the {_size_text(limit)} limit")
    try:
        fd = os.open(path, flags)
    except OSError as error:
        if error.errno == errno.ENOENT:
            raise fail("no such file or directory") from None
        raise fail(f"cannot read: {error.strerror or error.__class__.__name__}") from None
    try:
        after = os.fstat(fd)
        if not stat.S_ISREG(after.st_mode):
            raise fail(f"is {_kind(after.st_mode)}, not a regular {what}: not read")
        chunks: list[bytes] = []
        remaining = limit + 1  # one byte more tells "exactly the limit" from "over it"
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1024 * 1024))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    except OSError as error:
        raise fail(f"cannot read: {error.strerror or error.__class__.__name__}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        raise fail(f"{what} is larger than the {_size_text(limit)} limit")
    return data
