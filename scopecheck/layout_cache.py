"""Persistent layout cache, keyed by the ELF's build-id (or path, size and mtime).

One JSON file per ELF (and per scopecheck code fingerprint, :mod:`scopecheck.cache`) under
``<cache>/layouts/``; ``--no-cache`` (``cache.disabled()``) bypasses it. Written atomically (temporary file +
rename, so concurrent runs each see a whole file); a file that does not parse, was written
by another cache format, or whose content does not match its SHA-256 (a flipped digit would
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
from scopecheck.paths import atomic_write_text, cache_dir

FORMAT = 3


class LayoutCache:
    def __init__(self, path, key: dict):
        self.path = path
        self.key = key
        self.layouts: dict[str, StructLayout | None] = {}
        self.pahole: dict[str, dict] = {}  # pahole version -> {struct: PaholeStruct dict}
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
        try:
            with open(self.path) as f:
                data = json.load(f)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            from scopecheck.cache import report_bad

            report_bad(self.path, f"not JSON: {e}")
            return
        try:
            if data.get("sha256") != _digest(data):
                from scopecheck.cache import report_bad

                report_bad(self.path, "checksum mismatch")
                return
            if data.get("key") != self.key:
                return
            self.layouts = {n: (StructLayout.from_dict(d) if d else None)
                            for n, d in data.get("layouts", {}).items()}
            self.pahole = data.get("pahole", {})
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self.layouts, self.pahole = {}, {}

    def pahole_structs(self, pahole_version: str) -> dict[str, PaholeStruct | None]:
        got = self.pahole.get(pahole_version, {})
        return {n: (PaholeStruct(**d) if d else None) for n, d in got.items()}

    def set_pahole(self, pahole_version: str, structs: dict[str, PaholeStruct | None]) -> None:
        d = self.pahole.setdefault(pahole_version, {})
        d.update({n: (p.to_dict() if p else None) for n, p in structs.items()})

    def save(self) -> None:
        data = {
            "key": self.key,
            "layouts": {n: (l.to_dict() if l else None) for n, l in self.layouts.items()},
            "pahole": self.pahole,
        }
        data["sha256"] = _digest(data)
        try:
            atomic_write_text(self.path, json.dumps(data, separators=(",", ":")))
        except OSError:
            pass  # a read-only cache must not fail the command


def _digest(data: dict) -> str:
    """SHA-256 of the cache content (everything but the digest itself)."""
    body = {k: data.get(k) for k in ("key", "layouts", "pahole")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
