"""Queries: which field paths hyp code may touch, and the judgement of accesses against them.

A query is one TOML file with a stable ``id``; the shipped ones are package data in
``scopecheck/queries/`` (see its README.md), found by id from any install::

    id = "rfc-hyp-scope"
    [allow]                          # per root struct, allowed field-path prefixes
    kvm_vcpu = ["arch.ctxt", "@rfc_hyp_fields"]
    kvm_cpu_context = ["*"]          # the whole struct
    [virtual]                        # named groups, so one rule fits several kernels
    rfc_hyp_fields = ["arch.hcr_el2", "arch.fault"]

Optional keys: ``roots`` (judge only accesses made through these root types; default all),
``other_roots = "leak"`` (a judged access to a root missing from [allow] is a leak; default
ignored), ``entry_points`` (function names chains start from; default every hyp entry),
``escalations`` (report container_of / casts to a bigger root; default true),
``[applies_to] only_param_type`` (judge only functions whose only vcpu-ish parameter has
that type), ``severity`` (error | warning | note).

A *trust-boundary* query (``provenance = "host"``) judges instead every access made through
a host-owned pointer (see :mod:`scopecheck.source.provenance`) by its direction: reads against
``[allow_read]``, writes against ``[allow_write]`` (same shape as ``[allow]``, which it does not
need); ``[boundary] path`` names the functions (with their callees) whose host bytes the
per-vcpu-run totals count (default ``flush_hyp_vcpu``, ``sync_hyp_vcpu``).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from scopecheck.errors import InputError

#: the shipped queries: package data, so wheels, sdists, editable and pipx installs all have them
QUERY_DIR = Path(__file__).resolve().parent / "queries"
SEVERITIES = ("error", "warning", "note")
_ID = re.compile(r"^[a-z0-9][a-z0-9-]*$")

#: how embedded root structs map into kvm_vcpu: (root, path prefix) -> (root, new prefix)
EMBEDDINGS = (
    ("pkvm_hyp_vcpu", "vcpu", "kvm_vcpu", ""),
    ("kvm_vcpu_arch", "", "kvm_vcpu", "arch"),
)


@dataclass(slots=True)
class Query:
    id: str
    title: str
    description: str
    severity: str
    allow: dict[str, list[str]]
    virtual: dict[str, list[str]] = field(default_factory=dict)
    roots: list[str] | None = None
    other_roots: str = "ignore"
    entry_points: list[str] = field(default_factory=list)
    escalations: bool = True
    only_param_type: str | None = None
    vcpu_param_types: list[str] = field(default_factory=list)
    path: Path | None = None
    provenance: str | None = None  # "host": a trust-boundary query (judges host-owned memory by direction)
    allow_read: dict[str, list[str]] = field(default_factory=dict)
    allow_write: dict[str, list[str]] = field(default_factory=dict)
    boundary_path: list[str] = field(default_factory=list)

    def allowed_direction(self, root: str, path: str, direction: str) -> bool:
        """A boundary query: is a ``direction`` ("read" / "write") access of root:path allowed?"""
        table = self.allow_read if direction == "read" else self.allow_write
        out: list[str] = []
        for p in table.get(root, []):
            out.extend(self.virtual[p[1:]] if p.startswith("@") else [p])
        return any(path_has_prefix(path, p) for p in out)

    def allowed_prefixes(self, root: str) -> list[str] | None:
        """Expanded prefixes for ``root`` (virtual groups resolved); None if the root is not listed."""
        if root not in self.allow:
            return None
        out: list[str] = []
        for p in self.allow[root]:
            if p.startswith("@"):
                out.extend(self.virtual[p[1:]])
            else:
                out.append(p)
        return out

    def judges_root(self, original_root: str) -> bool:
        return self.roots is None or original_root in self.roots

    def is_allowed(self, root: str, path: str) -> bool | None:
        """True allowed, False a leak, None not judged (root unlisted and other_roots=ignore)."""
        prefixes = self.allowed_prefixes(root)
        if prefixes is None:
            return False if self.other_roots == "leak" else None
        return any(path_has_prefix(path, p) for p in prefixes)


def path_has_prefix(path: str, prefix: str) -> bool:
    """``arch.ctxt.regs.pc`` is under ``arch.ctxt``; ``arch.ctxtx`` is not; ``*`` covers all."""
    if prefix in ("*", ""):
        return True
    if path == prefix:
        return True
    return path.startswith(prefix) and path[len(prefix)] in ".["


def canonical(root: str, path: str) -> tuple[str, str]:
    """Map embedded roots into kvm_vcpu: ``pkvm_hyp_vcpu: vcpu.arch.x`` -> ``kvm_vcpu: arch.x``."""
    for src, pre, dst, newpre in EMBEDDINGS:
        if root != src:
            continue
        if pre and not path_has_prefix(path, pre):
            continue
        rest = path[len(pre):].lstrip(".") if pre else path
        if not rest and not newpre:
            return dst, ""
        return dst, f"{newpre}.{rest}".strip(".") if newpre else rest
    return root, path


def _shipped_dir():
    """The queries shipped in the package (importlib.resources: works for any kind of install)."""
    from importlib.resources import files

    return files("scopecheck") / "queries"


def available() -> dict[str, Path]:
    """Shipped query ids -> their files."""
    d = _shipped_dir()
    try:
        entries = sorted((t for t in d.iterdir() if t.name.endswith(".toml")), key=lambda t: t.name)
    except (OSError, FileNotFoundError):
        return {}
    return {t.name[:-len(".toml")]: Path(str(t)) for t in entries}


def load_query(id_or_path: str | Path) -> Query:
    """Load a query by id (a shipped query) or by the path of a user's .toml."""
    p = Path(id_or_path)
    if not p.suffix and not p.exists():
        found = available().get(str(id_or_path))
        if found is None:
            ids = ", ".join(available()) or "none"
            raise InputError(f"no query {id_or_path!r} (shipped: {ids}; or pass a .toml path)")
        p = found
    from scopecheck.paths import check_input_file

    check_input_file(p, what="query file", max_bytes=1 << 20)
    try:
        data = tomllib.loads(p.read_text())
    except OSError as e:
        raise InputError(f"{p}: cannot read the query file ({e.strerror or e})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: not valid TOML ({e})") from None
    return _parse(data, p)


def _str_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _parse(d: dict, p: Path) -> Query:
    def need(key, typ):
        if key not in d:
            raise InputError(f"{p}: query has no '{key}'")
        if not isinstance(d[key], typ):
            raise InputError(f"{p}: '{key}' must be {typ.__name__}")
        return d[key]

    qid = need("id", str)
    if not _ID.match(qid):
        raise InputError(f"{p}: query id {qid!r} must be lower-case letters, digits and '-'")
    prov = d.get("provenance")
    if prov is not None and prov != "host":
        raise InputError(f"{p}: provenance must be \"host\" (judge accesses through host-owned pointers)")
    allow = need("allow", dict) if prov is None else d.get("allow", {})
    if not isinstance(allow, dict):
        raise InputError(f"{p}: [allow] must be a table")
    tables = {"allow": allow}
    for name in ("allow_read", "allow_write"):
        t = d.get(name, {})
        if not isinstance(t, dict):
            raise InputError(f"{p}: [{name}] must be a table")
        if t and prov is None:
            raise InputError(f"{p}: [{name}] needs provenance = \"host\"")
        tables[name] = t
    virtual = d.get("virtual", {})
    if not isinstance(virtual, dict) or not all(_str_list(v) for v in virtual.values()):
        raise InputError(f"{p}: [virtual] must map names to lists of field-path strings")
    for name, table in tables.items():
        for root, prefixes in table.items():
            if not isinstance(prefixes, list) or not all(isinstance(x, str) for x in prefixes):
                raise InputError(f"{p}: {name}.{root} must be a list of field-path strings")
            for x in prefixes:
                if x.startswith("@") and x[1:] not in virtual:
                    raise InputError(f"{p}: {name}.{root} names virtual group {x!r}, which [virtual] lacks")
    bnd = d.get("boundary", {})
    if not isinstance(bnd, dict) or not _str_list(bnd.get("path", [])):
        raise InputError(f"{p}: [boundary] path must be a list of function names")
    sev = d.get("severity", "error")
    if sev not in SEVERITIES:
        raise InputError(f"{p}: severity must be one of {', '.join(SEVERITIES)}")
    other = d.get("other_roots", "ignore")
    if other not in ("ignore", "leak"):
        raise InputError(f"{p}: other_roots must be 'ignore' or 'leak'")
    roots = d.get("roots")
    if roots is not None and not (isinstance(roots, list) and all(isinstance(r, str) for r in roots)):
        raise InputError(f"{p}: roots must be a list of struct names")
    ep = d.get("entry_points", [])
    if not isinstance(ep, list):
        raise InputError(f"{p}: entry_points must be a list of function names")
    applies = d.get("applies_to", {})
    if not isinstance(applies, dict):
        raise InputError(f"{p}: [applies_to] must be a table")
    if not isinstance(applies.get("only_param_type", ""), str):
        raise InputError(f"{p}: applies_to.only_param_type must be a C type string")
    if not _str_list(applies.get("vcpu_param_types", [])):
        raise InputError(f"{p}: applies_to.vcpu_param_types must be a list of C type strings")
    return Query(id=qid, title=str(d.get("title", qid)), description=str(d.get("description", "")),
                 severity=sev, allow=allow, virtual=virtual, roots=roots, other_roots=other,
                 entry_points=[str(x) for x in ep], escalations=bool(d.get("escalations", True)),
                 only_param_type=applies.get("only_param_type"),
                 vcpu_param_types=list(applies.get("vcpu_param_types", [])), path=p,
                 provenance=prov, allow_read=tables["allow_read"], allow_write=tables["allow_write"],
                 boundary_path=list(bnd.get("path", [])))
