"""Command line: maps arguments to the library and errors to exit codes, nothing else.

Exit codes everywhere: 0 ok, 1 a finding (leak, mismatch) when a ``--fail-on-*``
flag asks for it, 2 an error (one line on stderr, never a traceback).
Heavy libraries (pandas, matplotlib, clang) are imported inside commands only.
"""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from scopecheck import __version__
from scopecheck.errors import ScopecheckError

app = typer.Typer(
    name="scopecheck",
    help="Which fields of struct kvm_vcpu does arm64 nVHE/pKVM hyp code touch, and does any hyp "
         "function reach outside an allowed scope? Reads the built kernel's DWARF.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class SizeFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"scopecheck {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.",
                                 callback=_version, is_eager=True),
) -> None:
    """scopecheck: scope analysis of arm64 KVM hyp code."""


@app.command()
def size(
    targets: Optional[List[Path]] = typer.Argument(
        None, metavar="[TARGET]...",
        help="vmlinux, an object such as kvm_nvhe.o, or a kernel build directory (O=) holding vmlinux "
             "and/or arch/arm64/kvm/hyp/nvhe/kvm_nvhe.o. Default: the embedded mini-hyp fixture."),
    struct: Optional[List[str]] = typer.Option(
        None, "--struct", "-s", metavar="NAME",
        help="Struct to show (repeatable). Default: kvm_vcpu, kvm_vcpu_arch, kvm_cpu_context, and "
             "vcpu_hyp_state / pkvm_hyp_vcpu when present."),
    expand: bool = typer.Option(False, "--expand", "-E",
                                help="Print the nested field tree with absolute offsets and sizes (pahole -E style)."),
    fmt: SizeFormat = typer.Option(SizeFormat.table, "--format", "-f",
                                   help="Output format: table, json (with schema_version and the member tree) or csv."),
    pahole: bool = typer.Option(True, "--pahole/--no-pahole",
                                help="Cross-check sizes with pahole (Debian package dwarves)."),
    fail_on_mismatch: bool = typer.Option(False, "--fail-on-mismatch",
                                          help="Exit 1 when pahole's size of a struct differs from scopecheck's."),
    cache: bool = typer.Option(True, "--cache/--no-cache",
                               help="Use the layout cache (keyed by ELF build-id) under $XDG_CACHE_HOME/scopecheck."),
) -> None:
    """Struct sizes and layouts from DWARF, cross-checked with pahole."""
    from scopecheck import targets as tg
    from scopecheck.output import size as out
    from scopecheck.size import size_report

    resolved = [tg.resolve(t) for t in targets] if targets else [tg.default_target()]
    reports = [size_report(t, struct, pahole=pahole, use_cache=cache) for t in resolved]
    if fmt is SizeFormat.json:
        text = out.to_json(reports)
    elif fmt is SizeFormat.csv:
        text = out.to_csv(reports, members=expand)
    else:
        text = out.expanded(reports) if expand else out.table(reports)
    sys.stdout.write(text)
    mismatches = [m for r in reports for m in r.mismatches]
    for m in mismatches:
        typer.echo(f"scopecheck: MISMATCH: {m}", err=True)
    if mismatches and fail_on_mismatch:
        raise typer.Exit(1)


def _add_subapps() -> None:
    try:
        from scopecheck.cli_kernel import kernel_app
    except ImportError:
        return
    app.add_typer(kernel_app, name="kernel")


_add_subapps()


def main() -> None:
    try:
        app()
    except ScopecheckError as e:
        print(f"scopecheck: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("scopecheck: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        sys.stderr.close()
        sys.exit(0)
    except Exception as e:  # a bug: still one line, unless asked for the traceback
        if os.environ.get("SCOPECHECK_DEBUG"):
            raise
        print(f"scopecheck: internal error: {type(e).__name__}: {e} "
              "(rerun with SCOPECHECK_DEBUG=1 for a traceback)", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
