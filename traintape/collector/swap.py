"""Atomic exchange of two folders (Linux `renameat2(RENAME_EXCHANGE)`), for compaction.

A reader that globs a folder while it is exchanged sees either every old file or every new one:
no moment in between. Not every filesystem has it (NFS, some FUSE and older kernels refuse), nor
hard links, which compaction stages the unchanged files with; `supported()` tries both once in a
scratch folder so the caller can fall back to renames one file at a time.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
from pathlib import Path

from traintape.errors import StoreError

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV, errno.EPERM}


class ExchangeUnsupportedError(StoreError, OSError):
    """This filesystem (or libc) cannot exchange two paths atomically."""


def exchange(a: Path, b: Path) -> None:
    """Swaps what the paths `a` and `b` name, atomically; both must exist."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except AttributeError:  # a libc older than glibc 2.28
        raise ExchangeUnsupportedError(errno.ENOSYS, "no renameat2 in this libc") from None
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    renameat2.argtypes += [ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        raise ExchangeUnsupportedError(err, os.strerror(err), str(a))
    raise OSError(err, os.strerror(err), str(a))


def supported(scratch: Path) -> bool:
    """Whether folders under `scratch` can be exchanged and hold hard links (tried, not guessed)."""
    probe = scratch / ".probe"
    shutil.rmtree(probe, ignore_errors=True)
    try:
        (probe / "a").mkdir(parents=True)
        (probe / "b").mkdir()
        (probe / "a" / "f").write_bytes(b"a")
        os.link(probe / "a" / "f", probe / "b" / "f")
        exchange(probe / "a", probe / "b")
        return True
    except OSError:
        return False
    finally:
        shutil.rmtree(probe, ignore_errors=True)
