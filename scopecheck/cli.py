"""Command line: maps arguments to the library and errors to exit codes, nothing else.

Exit codes everywhere: 0 ok, 1 a finding (leak, mismatch) when a ``--fail-on-*``
flag asks for it, 2 an error (one line on stderr, never a traceback).
Heavy libraries (pandas, matplotlib, clang) are imported inside commands only.
"""

from __future__ import annotations

import os
import subprocess
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


class ProofFormat(str, Enum):
    text = "text"
    json = "json"
    sarif = "sarif"
    dot = "dot"
    graphml = "graphml"


class DeriveFormat(str, Enum):
    c = "c"
    json = "json"


def _progress(quiet: bool):
    """A status line on a terminal's stderr; (context manager, step callback).

    Analysis takes seconds, so without a terminal it says nothing: stderr then holds
    at most the one line of an error.
    """
    import contextlib

    if quiet or not sys.stderr.isatty():
        return contextlib.nullcontext(), None
    from scopecheck.progress import StatusLine

    status = StatusLine(quiet)
    return status, status


def _emit(text: str, output: Optional[Path]) -> None:
    if output is None:
        sys.stdout.write(text)
    else:
        from scopecheck.paths import atomic_write_text

        atomic_write_text(output, text)


_TARGET_HELP = ("A kernel build directory (O=) with vmlinux or arch/arm64/kvm/hyp/nvhe/kvm_nvhe.o and "
                "compile_commands.json, a kvm_nvhe.o, or a bare vmlinux (binary-only). "
                "Default: the embedded mini-hyp fixture.")


def _prove(target, source, query, binary_only, entry, baseline, cache, quiet, include_compiled_away=False):
    from scopecheck import targets as tg
    from scopecheck.proof import prove

    if target is None:
        target = tg.DEFAULT_FIXTURE.parent
    base = None
    if baseline is not None:
        from scopecheck.output.proof import baseline_fingerprints

        from scopecheck.paths import check_input_file

        check_input_file(baseline, what="baseline (a callgraph json or sarif output)", max_bytes=1 << 30)
        base = baseline_fingerprints(baseline.read_text(), str(baseline))
    from scopecheck import cache as _cache

    ctx, step = _progress(quiet)
    with ctx, _cache.disabled(not cache):  # --no-cache reaches every layer, the binary door's layouts too
        return prove(target, source, query, binary_only=binary_only, entry_points=entry or None,
                     baseline=base, use_cache=cache, progress=step,
                     include_compiled_away=include_compiled_away)


@app.command()
def callgraph(
    target: Optional[Path] = typer.Argument(None, metavar="[TARGET]", help=_TARGET_HELP),
    source: Optional[Path] = typer.Option(
        None, "--source", metavar="SRC",
        help="Kernel source tree. Default: the 'source' link in the build directory, or the build "
             "directory itself for in-tree builds."),
    query: str = typer.Option("rfc-hyp-scope", "--query", metavar="ID_OR_PATH",
                              help="Id of a query shipped with scopecheck (rfc-hyp-scope, ctxt-only, pkvm-hyp-vcpu) or "
                                   "the path of your own .toml."),
    fmt: ProofFormat = typer.Option(ProofFormat.text, "--format", "-f",
                                    help="text, json (schema_version, leaks, footprint, unresolved_calls), "
                                         "sarif (2.1.0), dot or graphml (the call graph)."),
    fail_on_leak: bool = typer.Option(False, "--fail-on-leak", help="Exit 1 when a leak (not in --baseline) is found."),
    baseline: Optional[Path] = typer.Option(None, "--baseline", metavar="FILE",
                                            help="A previous --format json or sarif output: its leaks do not fail the gate."),
    entry: Optional[List[str]] = typer.Option(None, "--entry", metavar="FUNC",
                                              help="Start call chains at this hyp function (repeatable). "
                                                   "Default: the query's entry points, else every assembly entry."),
    binary_only: bool = typer.Option(False, "--binary-only", help="Ignore the source even when it is there."),
    include_compiled_away: bool = typer.Option(
        False, "--include-compiled-away",
        help="Also judge source accesses in code the compiler removed (listed as 'not in this build' in "
             "the evidence otherwise)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", metavar="FILE",
                                          help="Write the output to FILE (atomically) instead of stdout."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Use the layout and source caches."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress on stderr."),
) -> None:
    """Call graph of nVHE hyp code, field accesses per function, and leaks against a query."""
    from scopecheck.output import proof as out

    r = _prove(target, source, query, binary_only, entry, baseline, cache, quiet, include_compiled_away)
    render = {ProofFormat.text: out.text, ProofFormat.json: out.to_json, ProofFormat.sarif: out.to_sarif,
              ProofFormat.dot: out.to_dot, ProofFormat.graphml: out.to_graphml}[fmt]
    _emit(render(r), output)
    if fail_on_leak and r.gating_leaks:
        raise typer.Exit(1)


@app.command()
def derive(
    target: Optional[Path] = typer.Argument(None, metavar="[TARGET]", help=_TARGET_HELP),
    source: Optional[Path] = typer.Option(None, "--source", metavar="SRC", help="Kernel source tree (as for callgraph)."),
    binary_only: bool = typer.Option(False, "--binary-only", help="Ignore the source even when it is there."),
    fmt: DeriveFormat = typer.Option(DeriveFormat.c, "--format", "-f", help="c (a struct definition) or json."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Use the layout and source caches."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress on stderr."),
) -> None:
    """The minimal hyp state: a struct vcpu_hyp_state of the kvm_vcpu fields hyp touches outside kvm_cpu_context."""
    from scopecheck import jsontext
    from scopecheck.derive import derive as _derive, to_c
    from scopecheck.layout import load_layouts

    r = _prove(target, source, "rfc-hyp-scope", binary_only, None, None, cache, quiet)
    lays = load_layouts(r.inputs.elf, ["kvm_vcpu", "kvm_cpu_context"], use_cache=cache)
    if lays.get("kvm_cpu_context") is None:
        raise ScopecheckError(f"{r.inputs.elf}: struct kvm_cpu_context not found in DWARF")
    d = _derive(r.footprint, lays["kvm_vcpu"], lays["kvm_cpu_context"], str(r.inputs.elf))
    sys.stdout.write(to_c(d) if fmt is DeriveFormat.c else jsontext.dumps(d.to_dict()) + "\n")


class NarrowFormat(str, Enum):
    text = "text"
    json = "json"


@app.command()
def narrow(
    target: Optional[Path] = typer.Argument(None, metavar="[TARGET]", help=_TARGET_HELP),
    source: Optional[Path] = typer.Option(None, "--source", metavar="SRC", help="Kernel source tree (as for callgraph)."),
    query: str = typer.Option("rfc-hyp-scope", "--query", metavar="ID_OR_PATH",
                              help="Query id or .toml path whose [narrow] table names the narrower parameter types."),
    fmt: NarrowFormat = typer.Option(NarrowFormat.text, "--format", "-f",
                                     help="text (totals, plan, blocked functions) or json (schema_version, "
                                          "functions, plan, totals)."),
    emit_cocci: Optional[Path] = typer.Option(
        None, "--emit-cocci", metavar="FILE",
        help="Also write a Coccinelle semantic patch narrowing the functions that can take "
             "struct kvm_cpu_context * alone (apply with spatch); its summary goes to stderr."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="text: also list every function's needs."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", metavar="FILE",
                                          help="Write the output to FILE (atomically) instead of stdout."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Use the layout and source caches."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress on stderr."),
) -> None:
    """Which hyp functions taking struct kvm_vcpu * could take a narrower type, and a leaves-first plan."""
    from scopecheck.narrow import narrow as _narrow
    from scopecheck.output import narrow as out

    for f in (emit_cocci, output):
        if f is not None and not f.parent.is_dir():
            raise ScopecheckError(f"{f.parent}: no such directory")
    r = _prove(target, source, query, False, None, None, cache, quiet)
    n = _narrow(proof=r, use_cache=cache)
    if emit_cocci is not None:
        from scopecheck.output.cocci import emit
        from scopecheck.paths import atomic_write_text

        patch = emit(n)
        atomic_write_text(emit_cocci, patch.text)
        if not quiet:
            typer.echo(patch.summary().rstrip("\n"), err=True)
    _emit(out.to_json(n) if fmt is NarrowFormat.json else out.text(n, verbose=verbose), output)



#: every subcommand defined outside this module: (name, module, attribute, "command" | "group").
#: All are registered even when their module cannot be imported (a missing optional dependency):
#: running such a command then says why in one line and exits 2; nothing is hidden from --help.
SUBCOMMANDS = [
    ("kernel", "scopecheck.cli_kernel", "kernel_app", "group"),
    ("boot", "scopecheck.cli_boot", "boot_cmd", "command"),
    ("report", "scopecheck.cli_report", "report_cmd", "command"),
    ("diff", "scopecheck.cli_report", "diff_cmd", "command"),
    ("series", "scopecheck.cli_series", "series_cmd", "command"),
]


def _unavailable(name: str, err: ImportError):
    missing = getattr(err, "name", None)
    why = f"needs the Python module '{missing}', which is not installed" if missing else str(err)

    def cmd(ctx: typer.Context) -> None:
        raise ScopecheckError(f"`scopecheck {name}` is unavailable: {why} "
                              "(reinstall scopecheck with its dependencies)")

    cmd.__doc__ = f"(unavailable here: {why})"
    return cmd


def _add_subapps() -> None:
    import importlib

    for name, module, attr, kind in SUBCOMMANDS:
        try:
            obj = getattr(importlib.import_module(module), attr)
        except ImportError as e:
            app.command(name, context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                                                "help_option_names": []})(_unavailable(name, e))
            continue
        if kind == "group":
            app.add_typer(obj, name=name)
        else:
            app.command(name)(obj)


_add_subapps()


def main() -> None:
    try:
        app()
    except ScopecheckError as e:
        print(f"scopecheck: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except subprocess.TimeoutExpired as e:
        prog = e.cmd[0] if isinstance(e.cmd, (list, tuple)) and e.cmd else e.cmd
        print(f"scopecheck: {prog} did not finish within {e.timeout:.0f} s", file=sys.stderr)
        sys.exit(2)
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
