"""``scopecheck report`` and ``scopecheck diff``.

Registered in cli.py as ``app.command("report")(report_cmd)`` and ``app.command("diff")(diff_cmd)``.
Exit codes: 0 ok, 1 a ``--fail-on-*`` finding (diff), 2 an error (one line on stderr).
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from scopecheck.errors import ScopecheckError


class DiffFormat(str, Enum):
    text = "text"
    json = "json"


def _fail(e: ScopecheckError) -> None:
    typer.echo("scopecheck: " + " ".join(str(e).split()), err=True)
    raise typer.Exit(getattr(e, "exit_code", 2))


def report_cmd(
    target: Optional[Path] = typer.Argument(
        None, metavar="[TARGET]",
        help="As for callgraph: a kernel build directory (O=), a kvm_nvhe.o, or a bare vmlinux (binary-only). "
             "Default: the embedded mini-hyp fixture."),
    out: Path = typer.Option(..., "--out", "-o", metavar="DIR",
                             help="Report directory to write (e.g. reports/6.1/). Built next to DIR and renamed "
                                  "into place; an existing report there is replaced, any other non-empty "
                                  "directory is refused."),
    source: Optional[Path] = typer.Option(None, "--source", metavar="SRC",
                                          help="Kernel source tree (as for callgraph)."),
    query: str = typer.Option("rfc-hyp-scope", "--query", metavar="ID_OR_PATH",
                              help="Id of a shipped query or the path of your own .toml (as for callgraph)."),
    boot: Optional[Path] = typer.Option(None, "--boot", metavar="BOOT.json",
                                        help="A `scopecheck boot --format json` report to include."),
    history: Optional[Path] = typer.Option(None, "--history", metavar="DB",
                                           help="Append this run to the SQLite file DB (created if missing) and "
                                                "plot the trend across all its runs."),
    label: Optional[str] = typer.Option(None, "--label", metavar="TEXT",
                                        help="Name of this run in titles and the trend (default: the kernel "
                                             "release, e.g. '6.1.192 pkvm-tiny', else the target's name)."),
    entry: Optional[List[str]] = typer.Option(None, "--entry", metavar="FUNC",
                                              help="Start call chains at this hyp function (repeatable)."),
    binary_only: bool = typer.Option(False, "--binary-only", help="Ignore the source even when it is there."),
    pahole: bool = typer.Option(True, "--pahole/--no-pahole", help="Cross-check struct sizes with pahole."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Use the layout and source caches."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
) -> None:
    """Run size and callgraph on TARGET and write an HTML report with CSV tables and PNG/SVG figures."""
    from scopecheck import targets as tg
    from scopecheck.report import report

    if target is None:
        target = tg.DEFAULT_FIXTURE.parent
    step = None
    if not quiet and sys.stderr.isatty():
        step = lambda msg: typer.echo(f"scopecheck: {msg}", err=True)  # noqa: E731
    try:
        data, files = report(target, out, source, query, boot=boot, history=history, label=label,
                             binary_only=binary_only, entry_points=entry or None, pahole=pahole,
                             use_cache=cache, progress=step)
    except ScopecheckError as e:
        _fail(e)
    if not quiet:
        h = data.headline
        typer.echo(f"{files.out / 'index.html'}")
        typer.echo(f"  {h['answer']}")
        if h["rfc_scope"] is not None:
            typer.echo(f"  kvm_vcpu {h['kvm_vcpu']} B; RFC scope {h['rfc_scope']} B ({h['rfc_scope_pct']:.1f}%)"
                       + (f"; derived {h['derived_total']} B ({h['derived_pct']:.1f}%)"
                          if h["derived_total"] is not None else ""))
        if files.history_run is not None:
            typer.echo(f"  history: run #{files.history_run} in {history}")


def diff_cmd(
    a: Path = typer.Argument(..., metavar="A.json", show_default=False,
                             help="`scopecheck size` or `scopecheck callgraph` --format json output (the old one)."),
    b: Path = typer.Argument(..., metavar="B.json", show_default=False,
                             help="Output of the same command to compare with A (the new one)."),
    fmt: DiffFormat = typer.Option(DiffFormat.text, "--format", "-f", help="text or json."),
    fail_on_growth: bool = typer.Option(False, "--fail-on-growth",
                                        help="Exit 1 when a struct grew (size) or hyp touches more fields (callgraph)."),
    fail_on_new_leak: bool = typer.Option(False, "--fail-on-new-leak",
                                          help="Exit 1 when B has a leak (by fingerprint) that A has not (callgraph)."),
) -> None:
    """Compare two size or two callgraph JSON outputs: struct growth, newly touched fields, new and removed leaks."""
    from scopecheck.diff import diff_files, findings, to_json, to_text

    try:
        d = diff_files(a, b)
    except ScopecheckError as e:
        _fail(e)
    why = findings(d, fail_on_growth, fail_on_new_leak)
    if fmt is DiffFormat.json:
        d["findings"] = why
        sys.stdout.write(to_json(d))
    else:
        sys.stdout.write(to_text(d))
        for w in why:
            typer.echo(f"scopecheck: {w}", err=True)
    if why:
        raise typer.Exit(1)
