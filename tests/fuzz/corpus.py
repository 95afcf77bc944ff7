"""The seed inputs of the ELF/DWARF fuzzer.

* the mini-hyp fixture objects (``fixtures/mini_hyp/build/*/``): ``kvm_nvhe.o`` and the
  per-file objects, relocatable, so pyelftools applies .rela.debug_* (the ``.o`` path);
* the same ``kvm_nvhe.o`` files linked with ``aarch64-linux-gnu-ld`` into ET_EXEC images, so
  DWARF is read in place through memory-map windows (the vmlinux path, and 20x faster);
* the pkvm-tiny 6.1 build's ``arch/arm64/kvm/hyp/nvhe/kvm_nvhe.o`` (a real nvhe object, 3.4 MB)
  when the build cache holds it, raw and linked.

Linked copies are written once per run into a scratch directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURE_BUILD = ROOT / "fixtures" / "mini_hyp" / "build"
LD = "aarch64-linux-gnu-ld"


@dataclass(frozen=True)
class Seed:
    name: str  # stable lane prefix, e.g. "fixture:after-dwarf5/kvm_nvhe.o"
    path: str
    linked: bool


def _link(obj: Path, dest: Path) -> Path | None:
    ld = shutil.which(LD)
    if ld is None:
        return None
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        # a private temporary per process and thread: two callers linking the same seed at once
        # must not write into one file (the loser would read a truncated ELF)
        tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        r = subprocess.run([ld, "-o", str(tmp), str(obj), "--unresolved-symbols=ignore-all", "-e", "0"],
                           capture_output=True, timeout=120)
        if r.returncode != 0 or not tmp.is_file():
            return None
        tmp.replace(dest)
    return dest


def real_nvhe_object() -> Path | None:
    """pkvm-tiny 6.1's kvm_nvhe.o if the build cache has it (builds it when the toolchain is there)."""
    import pytest

    try:
        from build_cache import pkvm_tiny_61

        k = pkvm_tiny_61()
    except (pytest.skip.Exception, ImportError, RuntimeError, OSError):
        return None
    p = Path(k.kvm_nvhe_o) if getattr(k, "kvm_nvhe_o", None) else None
    return p if p is not None and p.is_file() else None


def seeds(scratch: Path, real: Path | None = None) -> dict[str, list[Seed]]:
    """Seed inputs by group: ``reloc`` (fixture per-file .o), ``reloc-big`` (fixture kvm_nvhe.o), ``linked``
    (fixture kvm_nvhe.o, linked), ``real`` (pkvm-tiny 6.1 kvm_nvhe.o), ``real-linked``."""
    out: dict[str, list[Seed]] = {"reloc": [], "reloc-big": [], "linked": [], "real": [], "real-linked": []}
    if FIXTURE_BUILD.is_dir():
        for d in sorted(p for p in FIXTURE_BUILD.iterdir() if (p / "kvm_nvhe.o").is_file()):
            for o in sorted(d.glob("*.o")):  # kvm_nvhe.o: 6x slower to relocate than the per-file objects
                out["reloc-big" if o.name == "kvm_nvhe.o" else "reloc"].append(
                    Seed(f"fixture:{d.name}/{o.name}", str(o), False))
            ln = _link(d / "kvm_nvhe.o", scratch / f"{d.name}-linked.elf")
            if ln is not None:
                out["linked"].append(Seed(f"linked:{d.name}", str(ln), True))
    if real is not None and real.is_file():
        out["real"].append(Seed("real:pkvm-tiny-6.1/kvm_nvhe.o", str(real), False))
        ln = _link(real, scratch / "pkvm-tiny-6.1-kvm_nvhe-linked.elf")
        if ln is not None:
            out["real-linked"].append(Seed("real-linked:pkvm-tiny-6.1", str(ln), True))
    return out
