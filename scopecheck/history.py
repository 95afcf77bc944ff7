"""``scopecheck report --history DB``: one row per report run in an SQLite file (stdlib sqlite3).

Table ``runs``: id, timestamp (UTC ISO 8601), target, elf, build_id, kernel, label, query, mode,
the struct sizes (kvm_vcpu, kvm_vcpu_arch, kvm_cpu_context, vcpu_hyp_state, pkvm_hyp_vcpu;
NULL when a build lacks one), rfc_scope (kvm_cpu_context + the RFC's hyp state), derived_hyp_state
and derived_total (kvm_cpu_context + the derived vcpu_hyp_state), footprint (fields touched),
leaks, leak_functions, touched_bytes and leak_bytes (bytes of kvm_vcpu), report (the --out dir)
and structs_json (every struct size of the run).
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from scopecheck.errors import InputError

COLUMNS = (
    ("timestamp", "TEXT NOT NULL"), ("target", "TEXT"), ("elf", "TEXT"), ("build_id", "TEXT"),
    ("kernel", "TEXT"), ("label", "TEXT"), ("query", "TEXT"), ("mode", "TEXT"),
    ("kvm_vcpu", "INTEGER"), ("kvm_vcpu_arch", "INTEGER"), ("kvm_cpu_context", "INTEGER"),
    ("vcpu_hyp_state", "INTEGER"), ("pkvm_hyp_vcpu", "INTEGER"), ("rfc_scope", "INTEGER"),
    ("derived_hyp_state", "INTEGER"), ("derived_total", "INTEGER"), ("footprint", "INTEGER"),
    ("leaks", "INTEGER"), ("leak_functions", "INTEGER"), ("touched_bytes", "INTEGER"),
    ("leak_bytes", "INTEGER"), ("report", "TEXT"), ("structs_json", "TEXT"),
)
_NAMES = [c for c, _ in COLUMNS]


def _connect(path) -> sqlite3.Connection:
    p = Path(path)
    if p.exists() or p.is_symlink():
        from scopecheck.paths import check_input_file

        check_input_file(p, what="history database (--history)")
    if p.parent and not p.parent.is_dir():
        raise InputError(f"{p}: directory {p.parent} does not exist")
    try:
        con = sqlite3.connect(str(p), timeout=30)
        con.execute("CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                    + ", ".join(f"{c} {t}" for c, t in COLUMNS) + ")")
        have = {r[1] for r in con.execute("PRAGMA table_info(runs)")}
        for c, t in COLUMNS:  # a DB from an older scopecheck: add the new columns
            if c not in have:
                con.execute(f"ALTER TABLE runs ADD COLUMN {c} {t.replace(' NOT NULL', '')}")
        con.commit()
    except sqlite3.DatabaseError as e:
        raise InputError(f"{p}: not a scopecheck history database ({e})") from None
    return con


def row_from(data, report_dir: str | None = None) -> dict:
    """The history row of one report (:class:`scopecheck.report.ReportData`)."""
    h = data.headline
    structs = dict(h["structs"])
    return {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(data.created)),
        "target": str(data.proof.inputs.build_dir or data.proof.inputs.elf),
        "elf": h["target"], "build_id": h["build_id"], "kernel": h["kernel"], "label": h["label"],
        "query": h["query"], "mode": h["mode"],
        **{n: structs.get(n) for n in ("kvm_vcpu", "kvm_vcpu_arch", "kvm_cpu_context", "vcpu_hyp_state",
                                       "pkvm_hyp_vcpu")},
        "rfc_scope": h["rfc_scope"], "derived_hyp_state": h["derived_hyp_state"],
        "derived_total": h["derived_total"], "footprint": h["fields_touched"], "leaks": h["leaks"],
        "leak_functions": h["leak_functions"], "touched_bytes": h["touched_bytes"],
        "leak_bytes": h["leak_bytes"], "report": report_dir, "structs_json": json.dumps(structs, sort_keys=True),
    }


def record(path, row: dict) -> int:
    """Append ``row`` to the DB at ``path`` (created if missing); returns the run id."""
    con = _connect(path)
    try:
        with con:
            cur = con.execute(f"INSERT INTO runs ({', '.join(_NAMES)}) VALUES ({', '.join('?' * len(_NAMES))})",
                              [row.get(c) for c in _NAMES])
        return int(cur.lastrowid)
    except sqlite3.DatabaseError as e:
        raise InputError(f"{path}: cannot write the history database ({e})") from None
    finally:
        con.close()


def runs(path) -> list[dict]:
    """Every run in the DB, oldest first ([] for a new file; the file is created)."""
    con = _connect(path)
    try:
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute(f"SELECT id, {', '.join(_NAMES)} FROM runs ORDER BY id")]
    except sqlite3.DatabaseError as e:
        raise InputError(f"{path}: cannot read the history database ({e})") from None
    finally:
        con.close()


def run_label(run: dict) -> str:
    """x-axis label of a run: ``#3 6.1.192 pkvm-tiny`` (``this run`` for the unsaved one)."""
    ident = f"#{run['id']}" if run.get("id") is not None else "this run"
    name = run.get("label") or run.get("kernel") or Path(run.get("target") or "?").name
    return f"{ident} {name}"


def frame(rows: list[dict]):
    """The runs as a pandas DataFrame (history.csv)."""
    import pandas as pd

    return pd.DataFrame([{k: r.get(k) for k in ["id", *_NAMES] if k != "structs_json"} for r in rows])
