"""Where scopecheck keeps its caches (XDG), atomic file writes, and the one check of every input path."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def cache_root() -> Path:
    """``$SCOPECHECK_CACHE`` or ``$XDG_CACHE_HOME/scopecheck`` or ``~/.cache/scopecheck``."""
    env = os.environ.get("SCOPECHECK_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "scopecheck"


def cache_dir(kind: str) -> Path:
    d = cache_root() / kind
    d.mkdir(parents=True, exist_ok=True)
    return d


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    import tempfile  # lazily: a warm `size` writes nothing

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


# ---------------------------------------------------------------- input files

_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def check_input_file(path, *, what: str = "file", dir_ok: bool = False, dir_only: bool = False,
                     max_bytes: int | None = None) -> os.stat_result:
    """Refuse, with one clear :class:`InputError` line, what a command must not open.

    Checked with ``os.stat`` *before* anything opens the path, so a FIFO, ``/dev/zero``, a
    socket or a terminal never blocks or streams forever: only a regular file (or, with
    ``dir_ok``/``dir_only``, a directory) passes. A regular file must be readable (one byte
    read with a non-blocking open, which also catches files whose mode bits say nothing to
    root, such as write-only /proc files) and, with ``max_bytes`` (for text inputs read
    whole: queries, baselines, configs, patches), not larger than that.
    """
    from scopecheck.errors import InputError

    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise InputError(f"{p}: no such file or directory") from None
    except OSError as e:
        raise InputError(f"{p}: cannot access the {what} ({e.strerror or e})") from None
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        if dir_ok or dir_only:
            return st
        raise InputError(f"{p}: is a directory, not a {what}")
    if dir_only:
        raise InputError(f"{p}: not a directory (expected a {what})")
    for test, name in _KINDS:
        if test(mode):
            raise InputError(f"{p}: is {name}, not a regular file; scopecheck reads a {what} only "
                             "from a regular file")
    if not stat.S_ISREG(mode):
        raise InputError(f"{p}: not a regular file (expected a {what})")
    if max_bytes is not None and st.st_size > max_bytes:
        raise InputError(f"{p}: {st.st_size} bytes is too large for a {what} (limit {max_bytes} bytes)")
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
        try:
            os.pread(fd, 1, 0)
        finally:
            os.close(fd)
    except OSError as e:
        raise InputError(f"{p}: cannot read the {what} ({e.strerror or e})") from None
    return st
