"""Persistent layout cache, keyed by the ELF's build-id (or path, size and mtime).

One JSON file per ELF (and per scopecheck code fingerprint, :mod:`scopecheck.cache`) under
``<cache>/layouts/``; ``--no-cache`` (``cache.disabled()``) bypasses it. Written atomically (temporary file +
rename, so concurrent runs each see a whole file); a file that does not parse, was written
by another cache format, or whose content does not match its SHA-256 (first line) (a flipped digit would
otherwise be a wrong size, silently) is ignored and rewritten. A struct that is absent from the ELF is cached as ``null`` so
the next run does not search for it again.
"""

from __future__ import annotations

import hashlib
import json
import os

from scopecheck import __version__
from scopecheck import cache as _cache
from scopecheck.cache import enabled  # noqa: F401  (re-exported: --no-cache for the layout callers)
from scopecheck.model import PaholeStruct, StructLayout
from scopecheck.paths import atomic_write_bytes, cache_dir

FORMAT = 4


class LayoutCache:
    def __init__(self, path, key: dict):
        self.path = path
        self.key = key
        self.layouts: dict[str, StructLayout | None] = {}
        self.pahole: dict[str, dict] = {}  # pahole binary identity -> {"version", "structs": {...}}
        self._dirty = False

    @classmethod
    def for_elf(cls, elf) -> "LayoutCache":
        st_key = {"size": elf.file_size, "mtime_ns": elf.mtime_ns}
        bid = elf.build_id
        ident = bid or hashlib.sha256(f"{os.path.realpath(elf.path)}".encode()).hexdigest()[:32]
        key = {"format": FORMAT, "version": __version__, "code": _cache.code_fingerprint(), "build_id": bid, **st_key}
        # the code fingerprint in the name too: two scopecheck versions sharing a cache do not evict each other
        c = cls(cache_dir("layouts") / f"{ident}-{key['code'][:12]}.json", key)
        c._load()
        return c

    def _load(self) -> None:
        """File: one line ``sha256 <hex of the rest>``, then the JSON body (hashing bytes is cheaper
        than re-serialising the body, and a flipped digit anywhere is still caught)."""
        from scopecheck.cache import report_bad

        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return
        except OSError as e:
            report_bad(self.path, f"unreadable: {e}")
            return
        head, _, body = raw.partition(b"\n")
        if not head.startswith(b"sha256 ") or head[7:].decode(errors="replace") != hashlib.sha256(body).hexdigest():
            report_bad(self.path, "checksum mismatch (truncated, modified or an older format)")
            return
        try:
            data = json.loads(body)
            if data.get("key") != self.key:
                return
            self.layouts = {n: (StructLayout.from_dict(d) if d else None)
                            for n, d in data.get("layouts", {}).items()}
            self.pahole = data.get("pahole", {})
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            self.layouts, self.pahole = {}, {}
            report_bad(self.path, f"does not decode: {e}")

    def pahole_answers(self, pahole_id: str) -> dict | None:
        """pahole's parsed answers for this ELF, keyed by the pahole binary's identity (path, size,
        mtime: no ``pahole --version`` subprocess when warm): {"version", "structs": {name: ...}}."""
        got = self.pahole.get(pahole_id)
        if not isinstance(got, dict) or "version" not in got:
            return None
        return {"version": got["version"],
                "structs": {n: (PaholeStruct(**d) if d else None) for n, d in got.get("structs", {}).items()}}

    def set_pahole_answers(self, pahole_id: str, version: str | None, structs: dict) -> None:
        if version is None:
            return
        new = {"version": version, "structs": {n: (p.to_dict() if p else None) for n, p in structs.items()}}
        if self.pahole.get(pahole_id) != new:
            self.pahole[pahole_id] = new
            self._dirty = True

    @property
    def dirty(self) -> bool:
        return self._dirty

    def save(self) -> None:
        data = {
            "key": self.key,
            "layouts": {n: (l.to_dict() if l else None) for n, l in self.layouts.items()},
            "pahole": self.pahole,
        }
        body = json.dumps(data, separators=(",", ":")).encode()
        self._dirty = False
        try:
            atomic_write_bytes(self.path, b"sha256 " + hashlib.sha256(body).hexdigest().encode() + b"\n" + body)
        except OSError:
            pass  # a read-only cache must not fail the command
