"""Turn an emitted semantic patch into a unified diff against a kernel tree (for `kernel build --patch`).

spatch rewrites a scratch copy of the hyp sources (``arch/arm64/kvm/hyp`` and the header that
declares hyp functions); the diff is made with difflib (no time stamps), so the same semantic
patch always gives the same patch file, hence the same cached build.
"""

from __future__ import annotations

import difflib
import shutil
import subprocess
import tempfile
from pathlib import Path

HYP_DIR = "arch/arm64/kvm/hyp"
HEADERS = ("arch/arm64/include/asm/kvm_hyp.h",)


def spatch(cocci: Path, tree: Path, *, dirs=(HYP_DIR,), files=HEADERS) -> None:
    """Apply ``cocci`` in place to ``dirs`` (with their headers) and ``files`` under ``tree``."""
    runs = [["--dir", d, "--include-headers"] for d in dirs] + [[f] for f in files]
    for r in runs:
        p = subprocess.run(["spatch", "--sp-file", str(cocci), "--in-place", "--very-quiet", *r],
                           cwd=tree, capture_output=True, text=True, timeout=1800)
        if p.returncode != 0 or "EXN" in p.stdout + p.stderr:
            raise RuntimeError(f"spatch failed on {r}: {(p.stdout + p.stderr)[-2000:]}")


def cocci_to_patch(cocci: Path, source: Path, out: Path) -> list[str]:
    """Write the diff spatch makes on ``source``'s hyp code to ``out``; returns the changed files."""
    with tempfile.TemporaryDirectory(prefix="scopecheck-cocci-") as tmp:
        t = Path(tmp)
        shutil.copytree(source / HYP_DIR, t / HYP_DIR)
        for h in HEADERS:
            (t / h).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source / h, t / h)
        spatch(cocci, t)
        chunks, changed = [], []
        rels = sorted({*(str(p.relative_to(t)) for p in (t / HYP_DIR).rglob("*") if p.is_file()), *HEADERS})
        for rel in rels:
            a = (source / rel).read_text(errors="surrogateescape").splitlines(keepends=True)
            b = (t / rel).read_text(errors="surrogateescape").splitlines(keepends=True)
            if a != b:
                changed.append(rel)
                chunks.extend(difflib.unified_diff(a, b, f"a/{rel}", f"b/{rel}"))
    out.write_text("".join(chunks), errors="surrogateescape")
    return changed
