"""Patch series for the 6.1 hyp source, written at test time (no kernel text is stored here).

Each patch is made by copying ``arch/arm64/kvm/hyp/nvhe/switch.c`` from the extracted
pristine tree, editing the copy in Python next to stable anchors, and diffing with
:mod:`difflib`; the result is wrapped as ``git format-patch`` would (``From <sha>`` line,
headers, message, ``---``, the diff, the ``-- `` signature) and, for the mbox, posted with
a cover letter in shuffled order.

The leak series (``leak_series``):

1. ``harmless``: ``__kvm_vcpu_run`` also checks ``vcpu->arch.hcr_el2`` (inside rfc-hyp-scope);
2. ``add-leak``: ``__kvm_vcpu_run`` reads ``vcpu->vcpu_id`` (outside it: a new leak);
3. ``remove-leak``: takes that read out again (the leak is removed).

``after_leak``: a harmless patch on top of patch 2 (a second comment, its own nonce).
``bad_apply``: a patch whose context is not in switch.c. ``breaks_build``: a patch that
uses an undeclared identifier in ``__kvm_vcpu_run``.

The content depends only on the pristine source (and a nonce a test may give).
"""

from __future__ import annotations

import difflib
import random
import re
from pathlib import Path

SWITCH_C = "arch/arm64/kvm/hyp/nvhe/switch.c"
RUN_FN = r"^int __kvm_vcpu_run\(struct kvm_vcpu \*vcpu\)$"
ANCHOR = r"^\tu64 exit_code;$"

HARMLESS = ("\n\tif (!vcpu->arch.hcr_el2) /* scopecheck-series: harmless {nonce} */\n"
            "\t\treturn ARM_EXCEPTION_IL;\n")
LEAK = ("\tif (vcpu->vcpu_id < 0) /* scopecheck-series: leak */\n"
        "\t\treturn ARM_EXCEPTION_IL;\n")
BREAK = "\tscopecheck_series_undeclared = 1; /* scopecheck-series: break */\n"


def _insert_after(text: str, block: str, within: str = RUN_FN, anchor: str = ANCHOR) -> str:
    lines = text.splitlines(keepends=True)
    start = next(i for i, l in enumerate(lines) if re.match(within, l.rstrip("\n")))
    at = next(i for i in range(start, len(lines)) if re.match(anchor, lines[i].rstrip("\n")))
    return "".join(lines[:at + 1]) + block + "".join(lines[at + 1:])


def _diff(rel: str, old: str, new: str) -> str:
    d = "".join(difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                     f"a/{rel}", f"b/{rel}", n=3))
    assert d, "edit made no change"
    return f"diff --git a/{rel} b/{rel}\n" + d


def _mail(n: int, total: int, subject: str, body: str, diff: str, sha: str) -> str:
    changed = sum(1 for l in diff.splitlines() if l.startswith(("+", "-")) and not l.startswith(("+++", "---")))
    return (f"From {sha} Mon Sep 17 00:00:00 2001\n"
            "From: Ann Dev <ann@example.org>\n"
            f"Date: Tue, 2 Jan 2024 03:0{n}:05 +0000\n"
            f"Subject: [PATCH {n}/{total}] {subject}\n"
            f"Message-ID: <20240102030{n}05.{n}-ann@example.org>\n"
            "\n"
            f"{body}\n\nSigned-off-by: Ann Dev <ann@example.org>\n"
            "---\n"
            f" {SWITCH_C} | {changed} {'+' * changed}\n"
            " 1 file changed\n"
            "\n"
            f"{diff}"
            "-- \n2.39.5\n\n")


def _states(tree: Path, nonce: str = "") -> dict[str, str]:
    pristine = (tree / SWITCH_C).read_text()
    s1 = _insert_after(pristine, HARMLESS.format(nonce=nonce))
    s2 = _insert_after(s1, LEAK)
    assert s2 != s1 and s2.replace(LEAK, "") == s1
    return {"pristine": pristine, "harmless": s1, "leak": s2}


def leak_series(tree: Path, dest: Path, nonce: str = "") -> list[Path]:
    """The three format-patch files of the leak series (see the module doc).

    ``nonce`` goes into a comment of patch 1 (and so into the file every later patch sees):
    a new nonce makes switch.c's content new to every cache, so that a test can count the
    translation units parsed again.
    """
    st = _states(tree, nonce)
    dest.mkdir(parents=True, exist_ok=True)
    specs = [
        ("0001-KVM-arm64-nvhe-check-HCR_EL2-before-running.patch", "KVM: arm64: nVHE: check HCR_EL2 before running",
         "A harmless check of a field hyp owns.", _diff(SWITCH_C, st["pristine"], st["harmless"])),
        ("0002-KVM-arm64-nvhe-look-at-the-vcpu-id.patch", "KVM: arm64: nVHE: look at the vcpu id",
         "Reads vcpu->vcpu_id at EL2: outside the hyp scope.", _diff(SWITCH_C, st["harmless"], st["leak"])),
        ("0003-KVM-arm64-nvhe-do-not-look-at-the-vcpu-id.patch", "KVM: arm64: nVHE: do not look at the vcpu id",
         "Reverts the vcpu_id read.", _diff(SWITCH_C, st["leak"], st["harmless"])),
    ]
    out = []
    for i, (name, subject, body, diff) in enumerate(specs, 1):
        p = dest / name
        p.write_text(_mail(i, len(specs), subject, body, diff, f"{i:040x}"))
        out.append(p)
    return out


def after_leak(tree: Path, dest: Path, nonce: str, extra: str) -> Path:
    """A harmless patch 3' on top of the leak series' patch 2: one more comment (``extra``) in
    ``__kvm_vcpu_run``; the vcpu_id read stays."""
    st = _states(tree, nonce)
    after = _insert_after(st["leak"], f"\t/* scopecheck-series: after the leak {extra} */\n")
    dest.write_text(_mail(3, 3, "KVM: arm64: nVHE: comment after the vcpu id", "Harmless.",
                          _diff(SWITCH_C, st["leak"], after), "d" * 40))
    return dest


def as_mbox(patches: list[Path], dest: Path, seed: int = 14) -> Path:
    """The series posted to a list: a cover letter 0/n, then the patches in a shuffled order."""
    n = len(patches)
    cover = ("From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
             "From: Ann Dev <ann@example.org>\n"
             f"Subject: [PATCH 0/{n}] KVM: arm64: nVHE: a series to test scopecheck series\n"
             "Message-ID: <20240102030005.0-ann@example.org>\n\n"
             "This cover letter has no diff.\n\n")
    msgs = [p.read_text() for p in patches]
    random.Random(seed).shuffle(msgs)
    if msgs == [p.read_text() for p in patches]:
        msgs.reverse()
    dest.write_text(cover + "".join(msgs))
    return dest


def bad_apply(tree: Path, dest: Path, nonce: str = "", n: int = 2, total: int = 3) -> Path:
    """A patch whose context line is not in switch.c (the hunk cannot apply)."""
    st = _states(tree, nonce)
    wrong = st["harmless"].replace("\tu64 exit_code;\n", "\tu64 exit_code; /* not in the tree */\n", 1)
    diff = _diff(SWITCH_C, wrong, _insert_after(wrong, LEAK, anchor=r"^\tu64 exit_code; /\* not in the tree \*/$"))
    dest.write_text(_mail(n, total, "KVM: arm64: nVHE: a patch against another tree", "Does not apply.", diff,
                          "b" * 40))
    return dest


def breaks_build(tree: Path, dest: Path) -> Path:
    """A patch that applies and does not compile (an undeclared identifier in __kvm_vcpu_run)."""
    st = _states(tree)
    diff = _diff(SWITCH_C, st["pristine"], _insert_after(st["pristine"], BREAK))
    dest.write_text(_mail(1, 1, "KVM: arm64: nVHE: use an undeclared variable", "Does not build.", diff, "c" * 40))
    return dest
