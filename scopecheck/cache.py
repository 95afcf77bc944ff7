"""Caches that cannot lie: one code fingerprint in every key, typed msgpack entries, checked on read.

Every persistent cache (layouts, pahole answers, binary facts, source TU facts) keys its
entries by the *input's* identity (ELF build-id, size, mtime; or file contents) **and**
:func:`code_fingerprint`, a hash of this package's own ``.py`` files and :data:`SCHEMA`: an
upgraded or edited scopecheck never reads what another one computed.

Entries are msgpack (msgspec), never pickle: :func:`dumps` records a small type description
of the value (tuples, lists, dicts, scalars and scopecheck's dataclasses), and :func:`loads`
decodes with that type, so records come back as the same dataclasses, fast (typed decoding
runs in C), and with fields other modules add to those dataclasses included automatically.
Only classes from the ``scopecheck`` package can be named. Each entry carries the SHA-256 of
its payload: a truncated, flipped or foreign file is detected, reported once on stderr when
``SCOPECHECK_DEBUG`` is set, removed, and the caller recomputes.

A directory written to is kept under ``SCOPECHECK_CACHE_MAX_MB`` (default 2048), least recently
used entries out first (:func:`prune`).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import hashlib
import json
import os
import sys
import typing
from pathlib import Path
from typing import Any

#: bump when a cache's layout changes without a code change (the fingerprint covers the rest)
SCHEMA = 1
MAGIC = b"SCOPECHECK-CACHE\x01\n"


@functools.cache
def code_fingerprint() -> str:
    """SHA-256 (32 hex digits) of :data:`SCHEMA` and every ``.py`` file of the installed package.

    Computed once per process (about a millisecond per 100 kB of code).
    """
    root = Path(__file__).resolve().parent
    h = hashlib.sha256(f"scopecheck-cache-schema {SCHEMA}\n".encode())
    for p in sorted(root.rglob("*.py")):
        try:
            data = p.read_bytes()
        except OSError:
            continue
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + data + b"\0")
    return h.hexdigest()[:32]


def key(*parts) -> str:
    """A cache key: SHA-256 of ``parts`` (JSON) and the code fingerprint."""
    body = json.dumps([code_fingerprint(), *parts], sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()[:40]


# ---------------------------------------------------------------- --no-cache, for every layer

_OFF = contextvars.ContextVar("scopecheck_no_cache", default=False)


def enabled() -> bool:
    """False inside :func:`disabled` (``--no-cache``): no layer reads or writes its cache."""
    return not _OFF.get()


@contextlib.contextmanager
def disabled(off: bool = True):
    """``with cache.disabled():`` every cache layer (layouts, pahole, binary, source) is bypassed."""
    tok = _OFF.set(bool(off) or _OFF.get())
    try:
        yield
    finally:
        _OFF.reset(tok)


# ---------------------------------------------------------------- corruption reports

_reported: set[str] = set()


def report_bad(path, why: str) -> None:
    """A cache entry that cannot be used: say so once (debug mode only) and remove it."""
    p = str(path)
    if os.environ.get("SCOPECHECK_DEBUG") and p not in _reported:
        _reported.add(p)
        print(f"scopecheck: debug: cache entry {p} is unusable ({why}); recomputing", file=sys.stderr)
    try:
        os.unlink(p)
    except OSError:
        pass


# ---------------------------------------------------------------- type descriptions

class Unsupported(TypeError):
    """A value this cache format cannot describe (it is then simply not cached)."""


_SCALARS = (str, int, float, bool, type(None), bytes)


def _spec(x, fix: dict) -> Any:
    """The type description of ``x``; ``fix`` collects {class: bare-tuple fields holding arrays}."""
    if isinstance(x, _SCALARS):
        return "any"
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        cls = type(x)
        if not cls.__module__.startswith("scopecheck."):
            raise Unsupported(f"{cls.__module__}.{cls.__qualname__} is not a scopecheck record")
        name = f"{cls.__module__}:{cls.__qualname__}"
        bare = _bare_tuple_fields(cls)
        for f in dataclasses.fields(cls):
            v = getattr(x, f.name)
            if f.name in bare:
                if v and any(isinstance(e, (list, tuple)) for e in v):
                    fix.setdefault(name, set()).add(f.name)
            elif isinstance(v, (list, tuple, dict)) or dataclasses.is_dataclass(v):
                _spec(v, fix)  # only to find nested records' bare-tuple fields
        return ["dc", name]
    if isinstance(x, tuple):
        return ["tuple", [_spec(e, fix) for e in x]]
    if isinstance(x, list):
        return ["list", functools.reduce(_merge, (_spec(e, fix) for e in x), None)]
    if isinstance(x, dict):
        if not all(isinstance(k, str) for k in x):
            raise Unsupported("dict keys must be strings")
        if len(x) <= 64:  # record-like: one type per key
            return ["map", {k: _spec(v, fix) for k, v in x.items()}]
        return ["dict", functools.reduce(_merge, (_spec(v, fix) for v in x.values()), None)]
    raise Unsupported(f"cannot cache a {type(x).__name__}")


def _merge(a, b):
    """One description for two items of a list (None: nothing known yet, e.g. an empty list)."""
    if a is None:
        return b
    if b is None or a == b:
        return a
    if a == "any" or b == "any":
        raise Unsupported("a list mixing records or containers with scalars")
    ta, tb = a[0], b[0]
    if ta == tb == "list":
        return ["list", _merge(a[1], b[1])]
    if ta == tb == "tuple" and len(a[1]) == len(b[1]):
        return ["tuple", [_merge(x, y) for x, y in zip(a[1], b[1])]]
    if ta == tb == "map":
        keys = dict.fromkeys([*a[1], *b[1]])
        return ["map", {k: _merge(a[1].get(k), b[1].get(k)) for k in keys}]
    if {ta, tb} <= {"map", "dict"}:
        vals = [v for t in (a, b) for v in (t[1].values() if t[0] == "map" else [t[1]])]
        return ["dict", functools.reduce(_merge, vals, None)]
    raise Unsupported("a list of differently typed items")


def _class(name: str):
    import importlib

    mod, _, qual = name.partition(":")
    if not mod.startswith("scopecheck."):
        raise Unsupported(name)
    obj = importlib.import_module(mod)
    for part in qual.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and dataclasses.is_dataclass(obj)):
        raise Unsupported(name)
    return obj


def _type(spec) -> Any:
    if spec == "any" or spec is None:
        return Any
    tag, arg = spec
    if tag == "dc":
        return _class(arg)
    if tag == "tuple":
        return tuple[tuple(_type(s) for s in arg)] if arg else tuple[()]
    if tag == "list":
        return list[_type(arg)]
    if tag == "dict":
        return dict[str, _type(arg)]
    if tag == "map":
        name = "Map_" + hashlib.sha256(json.dumps(arg, sort_keys=True).encode()).hexdigest()[:12]
        return typing.TypedDict(name, {k: _type(s) for k, s in arg.items()}, total=False)
    raise Unsupported(f"unknown type tag {tag!r}")


# -- bare ``tuple`` fields (FuncKey, ranges, params): msgpack arrays inside them come back as
#    lists; turn them back into tuples so records compare and hash as before

@functools.cache
def _bare_tuple_fields(cls) -> tuple[str, ...]:
    try:
        hints = typing.get_type_hints(cls)
    except Exception:
        return ()
    out = []
    for f in dataclasses.fields(cls):
        t = hints.get(f.name)
        args = typing.get_args(t)
        if t is tuple or (tuple in args and len(args) == 2 and type(None) in args):
            out.append(f.name)
    return tuple(out)


def _deep_tuple(v):
    return tuple(_deep_tuple(e) for e in v) if isinstance(v, (list, tuple)) else v


def _classes_in(t) -> set:
    """The dataclasses a type annotation names, at any depth (``list[FieldAccess] | None``...)."""
    if isinstance(t, type) and dataclasses.is_dataclass(t):
        return {t}
    out: set = set()
    for a in typing.get_args(t):
        out |= _classes_in(a)
    return out


@functools.cache
def _reaches(cls, targets: frozenset) -> bool:
    """Can a ``cls`` record hold (transitively) a record of a class in ``targets``?"""
    if cls in targets:
        return True
    try:
        hints = typing.get_type_hints(cls)
    except Exception:
        return True
    return any(_reaches(c, targets) for t in hints.values() for c in _classes_in(t) if c is not cls)


def _fix(obj, fix: dict, targets: frozenset) -> None:
    """Restore tuples inside the bare-``tuple`` fields named in ``fix`` ({class: fields})."""
    if isinstance(obj, (list, tuple)):
        if obj and dataclasses.is_dataclass(obj[0]) and not _reaches(type(obj[0]), targets):
            return
        for e in obj:
            _fix(e, fix, targets)
    elif isinstance(obj, dict):
        for e in obj.values():
            _fix(e, fix, targets)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        cls = type(obj)
        if not _reaches(cls, targets):
            return
        for name in fix.get(cls, ()):
            v = getattr(obj, name)
            if v is not None:
                setattr(obj, name, _deep_tuple(v))
        for f in dataclasses.fields(cls):
            v = getattr(obj, f.name)
            if isinstance(v, (list, tuple, dict)) or dataclasses.is_dataclass(v):
                if f.name not in fix.get(cls, ()):
                    _fix(v, fix, targets)


# ---------------------------------------------------------------- entries

def dumps(value) -> bytes:
    """``value`` as a cache entry (raises :class:`Unsupported` for what it cannot describe)."""
    import msgspec

    fix: dict = {}
    t = _spec(value, fix)
    spec = json.dumps({"t": t, "fix": {k: sorted(v) for k, v in sorted(fix.items())}},
                      separators=(",", ":")).encode()
    payload = msgspec.msgpack.encode(value)
    body = len(spec).to_bytes(4, "little") + spec + payload
    return MAGIC + hashlib.sha256(body).digest() + body


@functools.lru_cache(maxsize=64)
def _decoder(spec_json: bytes):
    import msgspec

    d = json.loads(spec_json)
    fix = {_class(k): tuple(v) for k, v in d["fix"].items()}
    return msgspec.msgpack.Decoder(_type(d["t"])), fix, frozenset(fix)


def loads(data: bytes):
    """The value of a cache entry; ValueError when it is damaged or not one."""
    import msgspec

    if not data.startswith(MAGIC):
        raise ValueError("not a scopecheck cache entry")
    digest, body = data[len(MAGIC):len(MAGIC) + 32], data[len(MAGIC) + 32:]
    if len(digest) != 32 or hashlib.sha256(body).digest() != digest:
        raise ValueError("checksum mismatch (truncated or modified)")
    n = int.from_bytes(body[:4], "little")
    spec = body[4:4 + n]
    try:
        dec, fix, targets = _decoder(bytes(spec))
        value = dec.decode(body[4 + n:])
    except (msgspec.DecodeError, msgspec.ValidationError, Unsupported, AttributeError, ImportError,
            TypeError, ValueError, KeyError) as e:
        raise ValueError(f"does not decode: {e}") from None
    if fix:
        _fix(value, fix, targets)
    return value


def read(path):
    """The cached value at ``path``, or None (missing; damaged ones are reported and removed).
    A value read is marked used (its mtime), for :func:`prune`."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    try:
        value = loads(data)
    except ValueError as e:
        report_bad(path, str(e))
        return None
    touch(path)
    return value


def write(path, value) -> bool:
    """Store ``value`` at ``path`` atomically; False when it cannot be (unsupported, read-only cache)."""
    from scopecheck.paths import atomic_write_bytes

    try:
        data = dumps(value)
    except Unsupported as e:
        if os.environ.get("SCOPECHECK_DEBUG"):
            print(f"scopecheck: debug: not caching {path}: {e}", file=sys.stderr)
        return False
    try:
        atomic_write_bytes(path, data)
    except OSError:
        return False
    _prune_once(Path(path).parent)
    return True


# ---------------------------------------------------------------- size: least recently used out

#: the most one cache directory (``source/``, ``hyp/``) keeps, unless ``SCOPECHECK_CACHE_MAX_MB``
#: says otherwise: each scopecheck version and each build adds entries (a 6.1 hyp TU's facts are
#: ~6 MB) that nothing else would ever remove
DEFAULT_MAX_MB = 2048
_PRUNED: set = set()


def max_bytes() -> int:
    """``SCOPECHECK_CACHE_MAX_MB`` (megabytes per cache directory), else :data:`DEFAULT_MAX_MB`."""
    raw = os.environ.get("SCOPECHECK_CACHE_MAX_MB", "")
    try:
        mb = int(raw) if raw.strip() else DEFAULT_MAX_MB
    except ValueError:
        mb = DEFAULT_MAX_MB
    return max(mb, 0) * 1024 * 1024


def touch(path) -> None:
    """Mark a cache entry used now (its mtime): :func:`prune` removes the least recently used."""
    try:
        os.utime(path)
    except OSError:
        pass


def prune(directory, limit: int | None = None) -> int:
    """Remove the least recently used entries of one cache directory (oldest mtime first: reads
    :func:`touch` them) until it holds at most 80% of ``limit`` bytes, when it holds more than
    ``limit`` (default :func:`max_bytes`). Unfinished writes (``.*.tmp``) younger than an hour are
    left alone. Returns the bytes removed; a file that cannot be removed is skipped."""
    import time

    limit = max_bytes() if limit is None else limit
    entries = []
    total = 0
    try:
        with os.scandir(directory) as it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if not e.is_file(follow_symlinks=False):
                    continue
                total += st.st_size
                if e.name.startswith(".") and e.name.endswith(".tmp") and time.time() - st.st_mtime < 3600:
                    continue
                entries.append((st.st_mtime_ns, e.name, st.st_size))
    except OSError:
        return 0
    if total <= limit:
        return 0
    removed = 0
    for _mtime, name, size in sorted(entries):
        if total - removed <= limit * 0.8:
            break
        try:
            os.unlink(os.path.join(directory, name))
        except OSError:
            continue
        removed += size
    return removed


def _prune_once(directory: Path) -> None:
    """:func:`prune` a cache directory after the first write a process makes to it."""
    if directory in _PRUNED:
        return
    _PRUNED.add(directory)
    prune(directory)
