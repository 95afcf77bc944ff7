"""Indented JSON text, fast: exactly what ``json.dumps(obj, indent=2, default=default)`` writes.

The standard library encodes with its C encoder only without ``indent``; with it, every value
goes through the pure-Python encoder (for a size report of a small object that is most of the
run). Here the C encoder writes compact JSON and msgspec (a dependency) re-indents it; the
tokens (escapes, numbers) stay the standard library's, and the whitespace is the same (the
tests compare the two on generated documents and on real reports). Text that is not strict
JSON (NaN, Infinity) goes the standard library's way.
"""

from __future__ import annotations

import json
from typing import Any, Callable


def dumps(obj: Any, default: Callable[[Any], Any] | None = None) -> str:
    """``json.dumps(obj, indent=2, default=default)``, byte for byte."""
    compact = json.dumps(obj, default=default, separators=(",", ":"))
    try:
        import msgspec
    except ImportError:  # pragma: no cover - a dependency; kept for a broken environment
        return json.dumps(obj, indent=2, default=default)
    try:
        return msgspec.json.format(compact, indent=2)
    except msgspec.DecodeError:  # NaN / Infinity: valid for json, not for msgspec
        return json.dumps(obj, indent=2, default=default)
