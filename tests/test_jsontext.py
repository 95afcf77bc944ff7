"""jsontext.dumps writes what json.dumps(indent=2) writes, byte for byte: every JSON output of
scopecheck goes through it (the standard library's indented encoder is pure Python)."""

from __future__ import annotations

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from scopecheck import jsontext

_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
                       max_leaves=40)


@settings(max_examples=300, deadline=None)
@given(_values)
def test_same_text_as_the_standard_library(v):
    assert jsontext.dumps(v) == json.dumps(v, indent=2)


def test_what_is_not_strict_json_and_defaults():
    for v in ({"x": math.nan}, [math.inf, -math.inf], {"k": {"s": {3, 1, 2}}}):
        assert jsontext.dumps(v, default=sorted) == json.dumps(v, indent=2, default=sorted)
    assert jsontext.dumps({1: "int key", "é\u2028": []}) == json.dumps({1: "int key", "é\u2028": []}, indent=2)
