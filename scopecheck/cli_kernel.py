"""``scopecheck kernel ...``: fetch Debian arm64 kernels into the cache.

Paths (or JSON) go to stdout; progress and errors go to stderr.
"""

from __future__ import annotations

import functools
import json

from scopecheck import jsontext
import sys
from enum import Enum
from typing import Annotated, Optional

import typer

from scopecheck.errors import ScopecheckError

kernel_app = typer.Typer(
    name="kernel",
    help="Fetch Debian arm64 kernels (dbg vmlinux, Image, config, source) into the cache.",
    no_args_is_help=True,
    add_completion=False,
)


@kernel_app.callback()
def _kernel_group() -> None:
    """Fetch Debian arm64 kernels (dbg vmlinux, Image, config, source) into the cache."""


class OutputFormat(str, Enum):
    text = "text"
    json = "json"


def _one_line_errors(fn):
    """Turn ScopecheckError into ``scopecheck: <msg>`` on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ScopecheckError as e:
            msg = " ".join(str(e).split())
            typer.echo(f"scopecheck: {msg}", err=True)
            raise typer.Exit(getattr(e, "exit_code", 2))
        except KeyboardInterrupt:
            typer.echo("scopecheck: interrupted", err=True)
            raise typer.Exit(130)

    return wrapper


class _StderrProgress:
    """progress(stage, done, total) -> a rich progress bar on a terminal, plain lines otherwise."""

    def __init__(self, quiet: bool):
        from rich.console import Console

        self.quiet = quiet
        self.console = Console(stderr=True)
        self.live = self.console.is_terminal and not quiet
        self.progress = None
        self.task = None
        self.stage = None

    def __enter__(self):
        if self.live:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self.progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)
        return False

    def __call__(self, stage: str, done: Optional[int], total: Optional[int]) -> None:
        if self.quiet:
            return
        if not self.live:
            # Without a terminal: one line per stage that does real work (not "resolving").
            if stage != self.stage and not stage.startswith("resolving"):
                self.stage = stage
                size = f" ({total / 1e6:.0f} MB)" if total and stage.startswith("downloading") else ""
                print(f"scopecheck: {stage}{size}", file=sys.stderr, flush=True)
            return
        if stage != self.stage:
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.stage = stage
            self.task = self.progress.add_task(stage, total=total)
        self.progress.update(self.task, completed=done or 0, total=total)


class PathChoice(str, Enum):
    vmlinux = "vmlinux"
    image = "image"
    config = "config"
    source = "source"


class BuildPath(str, Enum):
    out = "out"
    vmlinux = "vmlinux"
    image = "image"
    kvm_nvhe_o = "kvm_nvhe_o"


@kernel_app.command("fetch")
@_one_line_errors
def fetch_cmd(
    spec: Annotated[
        str,
        typer.Argument(
            help="Kernel to fetch: debian:6.1 or debian:6.12 (current ABI of the series), "
            "or an exact ABI such as debian:6.1.0-56 or debian:6.12.117+deb12.",
            show_default=False,
        ),
    ],
    flavour: Annotated[
        str, typer.Option("--flavour", help="Debian kernel flavour (package name part), e.g. cloud-arm64 or arm64.")
    ] = "cloud-arm64",
    source: Annotated[
        bool, typer.Option("--source", help="Also fetch the linux-source-<series>.tar.xz tarball.")
    ] = False,
    image: Annotated[
        bool,
        typer.Option(
            "--image/--no-image",
            help="Fetch the bootable Image and its config (from the -unsigned package); "
            "--no-image fetches only the dbg vmlinux.",
        ),
    ] = True,
    output_format: Annotated[
        OutputFormat,
        typer.Option("--format", help="Output on stdout: text (one 'name: path' per line) or json.", case_sensitive=False),
    ] = OutputFormat.text,
    verify: Annotated[
        bool,
        typer.Option("--verify", help="Re-hash cached files against their recorded SHA256 (re-fetch if damaged)."),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output on stderr.")] = False,
    path: Annotated[
        Optional[PathChoice],
        typer.Option("--path", help="Print only this one path (for $(...) in scripts): "
                                    "vmlinux, image, config or source.", case_sensitive=False),
    ] = None,
) -> None:
    """Download a Debian arm64 kernel (or find it in the cache) and print its paths."""
    from scopecheck.kernels.debian import fetch

    with _StderrProgress(quiet) as progress:
        k = fetch(spec, flavour=flavour, image=image, source=source, progress=progress, verify=verify)
    data = k.to_json()
    if path is not None:
        key = "source_tarball" if path is PathChoice.source else path.value
        if data.get(key) is None:
            raise ScopecheckError(f"no {path.value} for {spec}: fetch it with "
                                  + ("--source" if path is PathChoice.source else "--image"))
        typer.echo(data[key])
        return
    if output_format is OutputFormat.json:
        typer.echo(jsontext.dumps(data))
        return
    for key in ("abi", "version", "vmlinux", "image", "config", "source_tarball", "cache_dir"):
        if data.get(key) is not None:
            typer.echo(f"{key}: {data[key]}")


@kernel_app.command("list")
@_one_line_errors
def list_cmd(
    flavour: Annotated[
        str, typer.Option("--flavour", help="Debian kernel flavour (package name part), e.g. cloud-arm64 or arm64.")
    ] = "cloud-arm64",
    output_format: Annotated[
        OutputFormat,
        typer.Option("--format", help="Output on stdout: text (one ABI per line) or json.", case_sensitive=False),
    ] = OutputFormat.text,
) -> None:
    """List the kernel ABIs whose dbg package is in apt's index (no download)."""
    from scopecheck.kernels.debian import available_abis, _check_architecture

    _check_architecture()
    abis = available_abis(flavour)
    if output_format is OutputFormat.json:
        typer.echo(jsontext.dumps({"schema_version": 1, "flavour": flavour, "abis": abis}))
    else:
        for a in abis:
            typer.echo(f"debian:{a}")


# --------------------------------------------------------------------------- build (scopecheck.kernels.build)

from pathlib import Path as _Path  # noqa: E402


@kernel_app.command("build")
@_one_line_errors
def build_cmd(
    src: Annotated[
        _Path,
        typer.Argument(
            help="Kernel source: a directory (e.g. a git tree; must be clean, without .config) or a "
            ".tar.xz/.tar.gz tarball such as Debian's linux-source-6.1.tar.xz (extracted into the cache once).",
            show_default=False,
        ),
    ],
    out: Annotated[
        Optional[_Path],
        typer.Option("--out", "-o", show_default=False,
                     help="Build directory (make O=OUT); created if needed. Without --out the build goes to "
                     "scopecheck's build cache, keyed by source, config, patches and toolchain, and a "
                     "completed build there is reused."),
    ] = None,
    config: Annotated[
        str,
        typer.Option(
            "--config",
            help="pkvm-tiny: tinyconfig + scopecheck's fragment (KVM, GICv3, PSCI, PL011 console, initramfs, "
            "debug info, BTF), resolved against the tree's own Kconfig (missing dependencies such as NET are "
            "added; DWARF 5 where the tree and toolchain allow, else DWARF 4; BTF where the tree and pahole "
            "agree). defconfig: make defconfig + the same debug info, KVM and BTF. FILE: a complete .config "
            "(e.g. a distribution's config-*); only KVM and full debug info (of any DWARF version) are added.",
        ),
    ] = "pkvm-tiny",
    jobs: Annotated[
        Optional[int], typer.Option("--jobs", "-j", min=1, help="Parallel make jobs [default: number of CPUs].")
    ] = None,
    patch: Annotated[
        Optional[list[_Path]],
        typer.Option(
            "--patch",
            help="Patch (-p1) applied to a copy of SRC before building; repeatable, applied in order. "
            "A git format-patch file, a mail saved from a list (quoted-printable/base64 bodies are "
            "decoded) or a plain diff. Applied exactly (no fuzz); one that does not apply names its first "
            "failing hunk. SRC itself is never modified. Without --out, when the cache holds the build "
            "of SRC itself (same config and compiler) and debugedit is installed, that build is copied and "
            "only what the patches touch is recompiled.",
        ),
    ] = None,
    mbox: Annotated[
        Optional[_Path],
        typer.Option(
            "--mbox", metavar="FILE", show_default=False,
            help="An mbox of a posted series: its patches are applied after any --patch, in the order of "
            "their [PATCH n/m] numbers (cover letter 0/m and replies skipped; a missing number is an error).",
        ),
    ] = None,
    llvm: Annotated[
        bool, typer.Option("--llvm", help="Build with clang/LLVM (LLVM=1: clang, ld.lld, llvm-ar, ...) instead "
                                          "of aarch64-linux-gnu-gcc.")
    ] = False,
    use_ccache: Annotated[
        Optional[bool],
        typer.Option("--ccache/--no-ccache", show_default=False,
                     help="Compile through ccache, the host tools too [default: when ccache is installed]."),
    ] = None,
    output_format: Annotated[
        OutputFormat,
        typer.Option("--format", help="Output on stdout: text ('name: path' lines) or json.", case_sensitive=False),
    ] = OutputFormat.text,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output on stderr.")] = False,
    path: Annotated[
        Optional[BuildPath],
        typer.Option("--path", help="Print only this one path (for $(...) in scripts): out (the build "
                                    "directory), vmlinux, image or kvm_nvhe_o.", case_sensitive=False),
    ] = None,
) -> None:
    """Cross-build arm64 vmlinux, Image, kvm_nvhe.o and compile_commands.json from a kernel source.

    The full log is kept in OUT/scopecheck-build.log; a failure quotes the first compiler error.
    """
    from scopecheck.kernels.build import (StderrBuildProgress, build_kernel, cached_build, print_choices,
                                          print_result)
    from scopecheck.paths import check_input_file

    # every file argument, before anything opens it (a FIFO or /dev/zero must not block)
    check_input_file(src, what="kernel source directory or tarball", dir_ok=True)
    # (a path that does not exist is left to the build's own messages: unknown config name, no such patch)
    if config not in ("pkvm-tiny", "defconfig") and _Path(config).expanduser().exists():
        check_input_file(_Path(config).expanduser(), what="kernel .config (--config)", max_bytes=64 << 20)
    for p in patch or ():
        if p.expanduser().exists():
            check_input_file(p.expanduser(), what="patch (--patch)", max_bytes=256 << 20)
    from scopecheck.kernels.patches import build_patch_files

    patch = build_patch_files(patch or (), mbox) if (patch or mbox) else patch
    with StderrBuildProgress(quiet) as progress:
        if out is None:
            k = cached_build(src, config, patch or (), jobs=jobs, llvm=llvm, progress=progress,
                             ccache=use_ccache)
        else:
            k = build_kernel(src, out, config=config, jobs=jobs, patches=patch or (), llvm=llvm,
                             progress=progress, ccache=use_ccache)
    if not quiet:
        print_choices(k)
    if path is not None:
        typer.echo(str(getattr(k, path.value)))
        return
    print_result(k, output_format is OutputFormat.json)
