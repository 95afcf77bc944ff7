"""``scopecheck series``: registered in cli.py as ``app.command("series")(series_cmd)``.

Exit codes: 0 ok, 1 ``--fail-on-new-leak`` and a patch adds a leak, 2 an error or a failed
step (patch does not apply, build fails; with --keep-going after the whole series).
The report (text or JSON) goes to stdout, also when a step failed; progress and the
one-line error go to stderr.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from scopecheck.errors import ScopecheckError


class SeriesFormat(str, Enum):
    text = "text"
    json = "json"


def _fail(msg: str, code: int = 2) -> None:
    typer.echo("scopecheck: " + " ".join(msg.split()), err=True)
    raise typer.Exit(code)


def series_cmd(
    src: Path = typer.Argument(..., metavar="SRC", show_default=False,
                               help="Kernel source: a directory (a git tree for --range) or a .tar.xz/.tar.gz "
                                    "tarball such as Debian's linux-source-6.1.tar.xz. Never modified: the "
                                    "patches go to a copy."),
    patches: Optional[List[Path]] = typer.Argument(
        None, metavar="[PATCH]...", show_default=False,
        help="Patches in the order to apply them: git format-patch files, mails saved from a list "
             "(quoted-printable/base64 bodies decoded) or plain diffs."),
    mbox: Optional[Path] = typer.Option(None, "--mbox", metavar="FILE",
                                        help="An mbox of a posted series, applied in [PATCH n/m] order (cover "
                                             "letter and replies skipped); after any PATCH files."),
    rng: Optional[str] = typer.Option(None, "--range", metavar="A..B",
                                      help="The commits A..B of the git repository SRC (as git format-patch gives "
                                           "them), applied to SRC at A."),
    config: str = typer.Option("pkvm-tiny", "--config",
                               help="As for kernel build: pkvm-tiny, defconfig or a .config FILE."),
    query: str = typer.Option("rfc-hyp-scope", "--query", metavar="ID_OR_PATH",
                              help="Query id (rfc-hyp-scope, ctxt-only, pkvm-hyp-vcpu) or a .toml path."),
    fail_on_new_leak: bool = typer.Option(False, "--fail-on-new-leak",
                                          help="Exit 1 when a patch adds a leak against the state before it, "
                                               "naming the first such patch (as a bisect would)."),
    fmt: SeriesFormat = typer.Option(SeriesFormat.text, "--format", "-f",
                                     help="text (one row per patch) or json (schema_version, base, steps, "
                                          "first_regression, failures)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", metavar="DIR",
                                       help="Also write DIR/series.html with a trend figure (PNG/SVG), "
                                            "DIR/series.json and DIR/history.sqlite (one row per step)."),
    keep_going: bool = typer.Option(False, "--keep-going", "-k",
                                    help="Record a step that fails (patch does not apply, build fails) and go "
                                         "on with the next patch; exit 2 at the end."),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", min=1, help="Parallel make jobs [default: CPUs]."),
    llvm: bool = typer.Option(False, "--llvm", help="Build with clang/LLVM (LLVM=1)."),
    cache: bool = typer.Option(True, "--cache/--no-cache",
                               help="Use the layout and source caches and the analyses of earlier series steps."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress on stderr."),
) -> None:
    """Judge a patch series patch by patch: incremental builds, new and removed leaks per patch, the first regression."""
    from scopecheck.kernels.build import StderrBuildProgress
    from scopecheck.kernels.patches import read_patches
    from scopecheck.output import series as out_series
    from scopecheck.series import SeriesFailed, range_series, run_series

    try:
        given = [m for m in (patches, mbox, rng) if m]
        if rng and (patches or mbox):
            raise ScopecheckError("--range cannot be combined with PATCH files or --mbox")
        if not given:
            raise ScopecheckError("no patches: give PATCH files, --mbox FILE or --range A..B")
        notes: list[str] = []
        source_dir = src
        if rng:
            source_dir, plist, notes = range_series(src, rng)
        else:
            plist = read_patches(patches or (), mbox)
        failed = None
        with StderrBuildProgress(quiet) as progress:
            try:
                result = run_series(source_dir, plist, config=config, query=query, llvm=llvm, jobs=jobs,
                                    keep_going=keep_going, use_cache=cache, progress=progress, notes=notes)
            except SeriesFailed as e:
                result, failed = e.result, str(e)
        if out is not None:
            out_series.write_out(result, out)
        sys.stdout.write(out_series.to_json(result) if fmt is SeriesFormat.json else out_series.text(result))
        sys.stdout.flush()
    except ScopecheckError as e:
        _fail(str(e), getattr(e, "exit_code", 2))
    if failed:
        _fail(failed)
    if result.failures:
        s = result.failures[0]
        _fail(f"{len(result.failures)} step(s) failed; first: step {s.index}: {s.error}")
    if fail_on_new_leak and result.first_regression is not None:
        line = out_series.regression_line(result)
        typer.echo(f"scopecheck: {line}", err=True)
        raise typer.Exit(1)
