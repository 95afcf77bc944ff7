"""Patches as kernel developers have them: format-patch files, mails, an mbox of a series.

::

    from scopecheck.kernels.patches import read_patch, read_mbox, apply_patch
    p = read_patch("0002-KVM-arm64-foo.patch")      # or a mail saved from a list, or a bare diff
    p.subject, p.number, p.total, p.files, p.diff
    series = read_mbox("v2.mbox")                    # ordered by [PATCH n/m]; cover letter skipped
    apply_patch(p, tree)                             # patch -p1 --fuzz=0; PatchFailed names the hunk

Accepted inputs:

* ``git format-patch`` output (``From <sha> Mon Sep 17 00:00:00 2001`` line, RFC 2822
  headers, message, ``---``, diffstat, the diff, the ``-- `` signature);
* a message saved from a mail client or a list archive (any RFC 2822 headers, bodies in
  quoted-printable or base64, any charset, a patch in a ``text/x-patch`` attachment);
* a bare unified diff (``diff -u`` / ``git diff`` output; its subject is the file name);
* an mbox of a posted series (``mailbox.mbox``): the messages carrying a diff, ordered by
  the ``[PATCH n/m]`` / ``[RFC PATCH v2 n/m]`` numbers of their subjects. The cover letter
  (``0/m``) and replies (``Re:``) are skipped; a number missing from 1..m, two different
  patches with one number, or two series versions in one mbox are errors.

Application is exact (``patch -p1 --forward --batch --fuzz=0``, after a ``--dry-run``
so that a failing patch changes nothing); when a patch does not apply,
:class:`PatchFailed` names the patch, its subject and the first hunk that failed
(file and ``@@`` header).
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from scopecheck.errors import InputError

__all__ = ["Patch", "read_patch", "read_mbox", "read_patches", "parse_subject", "apply_patch",
           "materialize", "build_patch_files", "describe_failure", "PATCH_ARGS"]

#: Exact application, as ``kernel build --patch`` does it.
PATCH_ARGS = ("-p1", "--forward", "--batch", "--fuzz=0", "--no-backup-if-mismatch")

_TAG = re.compile(r"^\s*\[([^\]]*)\]\s*")
_NUM = re.compile(r"^(\d+)/(\d+)$")
_VER = re.compile(r"^v(\d+)$", re.I)
_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_REPLY = re.compile(r"^\s*(re|aw|sv|antw)\s*:", re.I)


@dataclass
class Hunk:
    file: str  # the file it patches (new name; old name for a deletion)
    header: str  # the "@@ -a,b +c,d @@ context" line
    index: int  # 1-based, within its file (as patch(1) counts: "Hunk #2 FAILED")


@dataclass
class Patch:
    """One patch: its subject, its series position and its unified diff."""

    name: str  # what to call it: the file name, or "MBOX#3"
    subject: str  # without the [PATCH ...] tags
    diff: str  # the unified diff (everything from the first diff header, signature cut)
    raw_subject: str = ""
    number: Optional[int] = None  # n of [PATCH n/m]
    total: Optional[int] = None  # m of [PATCH n/m]
    version: Optional[int] = None  # 2 of [PATCH v2 ...]
    tags: tuple[str, ...] = ()  # e.g. ("RFC", "PATCH", "v2", "3/7")
    author: str = ""
    date: str = ""
    message_id: str = ""
    path: Optional[Path] = None  # the file it came from
    files: list[str] = field(default_factory=list)  # files it changes (new names)
    all_paths: list[str] = field(default_factory=list)  # every path it reads or writes (old and new)
    hunks: list[Hunk] = field(default_factory=list)

    @property
    def label(self) -> str:
        """``[PATCH 2/3] subject`` style, for messages."""
        pos = f" {self.number}/{self.total}" if self.number is not None and self.total else ""
        return f"{self.name}{pos}: {self.subject}" if self.subject else self.name

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.diff.encode("utf-8", "surrogateescape")).hexdigest()

    def to_json(self) -> dict:
        return {"patch": self.name, "subject": self.subject, "number": self.number, "total": self.total,
                "version": self.version, "author": self.author, "message_id": self.message_id or None,
                "files": self.files}


# ---------------------------------------------------------------- subjects

def parse_subject(subject: str) -> tuple[str, dict]:
    """``"[RFC PATCH v2 3/7] KVM: arm64: foo"`` -> ("KVM: arm64: foo", {number, total, version, tags})."""
    s = " ".join((subject or "").split())
    info: dict = {"number": None, "total": None, "version": None, "tags": []}
    while True:
        m = _TAG.match(s)
        if not m:
            break
        for tok in m.group(1).replace(",", " ").split():
            info["tags"].append(tok)
            n = _NUM.match(tok)
            if n:
                info["number"], info["total"] = int(n.group(1)), int(n.group(2))
                continue
            v = _VER.match(tok)
            if v:
                info["version"] = int(v.group(1))
        s = s[m.end():]
    return s.strip(), info


# ---------------------------------------------------------------- the diff inside a text

def _diff_start(lines: list[str]) -> Optional[int]:
    for i, line in enumerate(lines):
        if line.startswith("diff --git ") or line.startswith("Index: "):
            return i
        if line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            return i
    return None


def _strip_prefix(path: str) -> str:
    path = path.split("\t", 1)[0].strip()
    if path.startswith('"') and path.endswith('"'):
        path = path[1:-1]
    return path.split("/", 1)[1] if "/" in path else path


def _scan_diff(text: str, name: str) -> tuple[str, list[str], list[str], list[Hunk]]:
    """(diff text with the signature cut, files changed, every path, hunks)."""
    lines = text.splitlines(keepends=True)
    bare = [l.rstrip("\r\n") for l in lines]
    start = _diff_start(bare)
    if start is None:
        raise InputError(f"{name}: no unified diff in it (no 'diff --git' or '---'/'+++' lines)")
    files: list[str] = []
    paths: list[str] = []
    hunks: list[Hunk] = []
    old_left = new_left = 0
    cur_file = "?"
    per_file = 0
    old_name: Optional[str] = None
    end = len(lines)
    i = start
    while i < len(lines):
        line = bare[i]
        if old_left > 0 or new_left > 0:  # inside a hunk: count its lines
            if line.startswith("\\"):
                pass
            elif line.startswith("-"):
                old_left -= 1
            elif line.startswith("+"):
                new_left -= 1
            elif line.startswith(" ") or line == "":
                old_left -= 1
                new_left -= 1
            else:  # a truncated hunk: let patch(1) complain
                old_left = new_left = 0
                continue
            i += 1
            continue
        if line == "-- " or line == "--":  # the signature after the last hunk
            end = i
            break
        if line.startswith("diff --git "):
            per_file = 0
            old_name = None
        elif line.startswith("--- "):
            old_name = None if line[4:].startswith("/dev/null") else _strip_prefix(line[4:])
            if old_name:
                paths.append(old_name)
        elif line.startswith("+++ "):
            new = None if line[4:].startswith("/dev/null") else _strip_prefix(line[4:])
            cur_file = new or old_name or "?"
            if new:
                paths.append(new)
            files.append(cur_file)
            per_file = 0
        elif line.startswith(("rename from ", "rename to ", "copy from ", "copy to ")):
            paths.append(line.split(" ", 2)[2].strip())
        else:
            m = _HUNK.match(line)
            if m:
                per_file += 1
                old_left = int(m.group(2)) if m.group(2) is not None else 1
                new_left = int(m.group(4)) if m.group(4) is not None else 1
                hunks.append(Hunk(cur_file, line.strip(), per_file))
        i += 1
    diff = "".join(lines[start:end])
    if not hunks and "rename from " not in diff and "deleted file mode" not in diff \
            and "new file mode" not in diff:
        raise InputError(f"{name}: the diff has no hunks")
    return diff, list(dict.fromkeys(files)), list(dict.fromkeys(paths)), hunks


# ---------------------------------------------------------------- mails and files

def _looks_like_mail(head: bytes) -> bool:
    first = head.split(b"\n", 1)[0]
    if first.startswith(b"From ") and not first.startswith(b"From: "):
        return True
    hdr = head.split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0]
    return bool(re.search(rb"^(Subject|From|Date|Message-ID|Message-Id):", hdr, re.M | re.I)) and \
        bool(re.match(rb"^[A-Za-z0-9-]+:", head))


def _body_text(msg) -> str:
    """The text of a message that holds the patch: the plain part, or a patch attachment."""
    parts = [msg] if not msg.is_multipart() else [p for p in msg.walk() if not p.is_multipart()]
    texts = []
    for part in parts:
        ctype = part.get_content_type()
        if ctype.startswith("text/") or ctype in ("application/octet-stream", "application/x-patch",
                                                  "application/x-diff", "message/rfc822"):
            try:
                payload = part.get_payload(decode=True)
            except Exception:  # a broken transfer encoding
                payload = None
            if payload is None:
                continue
            charset = part.get_content_charset() or "utf-8"
            try:
                texts.append(payload.decode(charset, errors="surrogateescape"))
            except LookupError:
                texts.append(payload.decode("utf-8", errors="surrogateescape"))
    with_diff = [t for t in texts if _diff_start(t.splitlines()) is not None]
    return (with_diff or texts or [""])[0]


def _hdr(msg, name: str) -> str:
    """A header, RFC 2047 encoded words decoded, folding undone."""
    from email.header import decode_header, make_header

    v = msg.get(name)
    if v is None:
        return ""
    try:
        text = str(make_header(decode_header(str(v))))
    except (ValueError, LookupError, UnicodeError):
        text = str(v)
    return " ".join(text.split())


def _from_message(msg, name: str, path: Optional[Path]) -> Patch:
    raw_subject = _hdr(msg, "Subject")
    subject, info = parse_subject(raw_subject)
    body = _body_text(msg)
    diff, files, paths, hunks = _scan_diff(body, name)
    return Patch(name=name, subject=subject, diff=diff, raw_subject=raw_subject,
                 number=info["number"], total=info["total"], version=info["version"], tags=tuple(info["tags"]),
                 author=_hdr(msg, "From"), date=_hdr(msg, "Date"), message_id=_hdr(msg, "Message-ID"), path=path, files=files,
                 all_paths=paths, hunks=hunks)


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise InputError(f"{path}: no such patch file")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None
    if b"\0" in data[:65536]:
        raise InputError(f"{path}: a binary file, not a patch")
    return data


def read_patch(path: os.PathLike | str) -> Patch:
    """One patch file: format-patch output, a saved mail, or a bare diff."""
    p = Path(path).expanduser()
    data = _read_bytes(p)
    if _looks_like_mail(data[:8192]):
        msg = email.message_from_bytes(data, policy=email.policy.compat32)
        patch = _from_message(msg, p.name, p)
        if not patch.subject:
            patch.subject = p.stem
        return patch
    diff, files, paths, hunks = _scan_diff(data.decode("utf-8", errors="surrogateescape"), p.name)
    return Patch(name=p.name, subject=p.stem, diff=diff, path=p, files=files, all_paths=paths, hunks=hunks)


def read_mbox(path: os.PathLike | str) -> list[Patch]:
    """The patches of a posted series in an mbox, in ``[PATCH n/m]`` order (see the module doc)."""
    import mailbox

    p = Path(path).expanduser()
    data = _read_bytes(p)
    if not data.startswith(b"From "):
        raise InputError(f"{p}: not an mbox (it does not start with a 'From ' line)")
    try:
        box = mailbox.mbox(str(p), create=False)
        messages = list(box)
    except (OSError, mailbox.Error) as e:
        raise InputError(f"{p}: cannot read the mbox: {e}") from None
    found: list[Patch] = []
    for i, msg in enumerate(messages, 1):
        raw = _hdr(msg, "Subject")
        if _REPLY.match(raw):
            continue
        subject, info = parse_subject(raw)
        if info["number"] == 0:
            continue  # the cover letter
        try:
            patch = _from_message(msg, f"{p.name}#{i}", p)
        except InputError:
            continue  # a message without a diff (a cover letter without numbers, a comment)
        if not patch.subject:
            patch.subject = f"message {i}"
        found.append(patch)
    if not found:
        raise InputError(f"{p}: no patches in the mbox ({len(messages)} message(s), none with a diff)")
    numbered = [x for x in found if x.number is not None]
    if not numbered:
        return found  # unnumbered: mbox order (git format-patch --stdout of one commit, or -N)
    if len(numbered) != len(found):
        odd = next(x for x in found if x.number is None)
        raise InputError(f"{p}: message {odd.name.rsplit('#', 1)[1]} ({odd.subject!r}) has no [PATCH n/m] "
                         "number while the others do")
    versions = sorted({x.version or 1 for x in numbered})
    if len(versions) > 1:
        raise InputError(f"{p}: the mbox holds more than one version of the series "
                         f"({', '.join(f'v{v}' for v in versions)}); save one version per mbox")
    totals = sorted({x.total for x in numbered})
    if len(totals) > 1:
        raise InputError(f"{p}: the patches disagree on the series length ({', '.join(f'/{t}' for t in totals)})")
    total = totals[0]
    by_num: dict[int, Patch] = {}
    for x in numbered:
        if x.number in by_num:
            if by_num[x.number].sha256 == x.sha256:
                continue  # the same patch twice (sent to two lists)
            raise InputError(f"{p}: two different patches numbered {x.number}/{total}")
        by_num[x.number] = x
    missing = [n for n in range(1, total + 1) if n not in by_num]
    if missing:
        raise InputError(f"{p}: the series is incomplete: patch {missing[0]}/{total} is missing "
                         f"({len(by_num)} of {total} present)")
    extra = [n for n in by_num if n > total]
    if extra:
        raise InputError(f"{p}: patch {extra[0]}/{total} is beyond the series length")
    return [by_num[n] for n in range(1, total + 1)]


def read_patches(files: Sequence[os.PathLike | str] = (), mbox: Optional[os.PathLike | str] = None) -> list[Patch]:
    """PATCH files in the order given, then (or instead) the patches of an mbox."""
    out = [read_patch(f) for f in files]
    if mbox is not None:
        out.extend(read_mbox(mbox))
    return out


# ---------------------------------------------------------------- files for patch(1)

def needs_materializing(path: os.PathLike | str) -> bool:
    """True when patch(1) cannot read the file as it is (an encoded or multipart mail)."""
    data = _read_bytes(Path(path))
    if not _looks_like_mail(data[:8192]):
        return False
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    if msg.is_multipart():
        return True
    cte = str(msg.get("Content-Transfer-Encoding", "") or "").strip().lower()
    return cte in ("quoted-printable", "base64")


def materialize(patch: Patch, directory: Optional[os.PathLike | str] = None) -> Path:
    """The patch as a plain file for patch(1): its Subject line and the decoded diff.

    Content-addressed (the same patch gives the same path, so build cache keys stay
    stable): ``<directory or cache_dir("patches")>/<sha>/<name>``.
    """
    from scopecheck.paths import atomic_write_bytes, cache_dir

    base = Path(directory) if directory is not None else cache_dir("patches")
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", patch.name.replace("#", "-")).strip("-") or "patch"
    if not name.endswith((".patch", ".diff")):
        name += ".patch"
    subject = patch.raw_subject or patch.subject
    text = (f"Subject: {subject}\n\n" if subject else "") + patch.diff
    data = text.encode("utf-8", "surrogateescape")
    dest = base / hashlib.sha256(data).hexdigest()[:16] / name
    if not dest.is_file():
        atomic_write_bytes(dest, data)
    return dest


def build_patch_files(files: Sequence[os.PathLike | str] = (), mbox: Optional[os.PathLike | str] = None) -> list[Path]:
    """``kernel build --patch/--mbox``: files patch(1) can apply, in order.

    A format-patch file or plain mail is passed as it is; an encoded or multipart mail
    and every patch of an mbox are decoded into :func:`materialize` files. Every input
    is checked first (no diff in it, an incomplete series: InputError).
    """
    out: list[Path] = []
    for f in files:
        patch = read_patch(f)
        out.append(materialize(patch) if needs_materializing(f) else Path(f).expanduser())
    if mbox is not None:
        for i, patch in enumerate(read_mbox(mbox), 1):
            stem = Path(mbox).name
            patch.name = f"{stem}-{patch.number or i:04d}.patch"
            out.append(materialize(patch))
    return out


# ---------------------------------------------------------------- applying

_FAILED_HUNK = re.compile(r"Hunk #(\d+) FAILED at (\d+)")
_PATCHING = re.compile(r"^(?:checking|patching) file (.+?)\s*$")


def describe_failure(patch: Patch, given: str, output: str) -> str:
    """One line: which patch, which file and hunk failed, and patch(1)'s reason."""
    lines = [l.rstrip() for l in output.splitlines()]
    cur = None
    for l in lines:
        m = _PATCHING.match(l.strip())
        if m:
            cur = m.group(1).strip("'\"")
            continue
        m = _FAILED_HUNK.search(l)
        if m:
            idx = int(m.group(1))
            hunk = next((h for h in patch.hunks if h.file == cur and h.index == idx), None)
            header = hunk.header if hunk else f"hunk #{idx}"
            return (f"patch {patch.label} does not apply to {given}: first failing hunk: {cur or '?'} "
                    f"{header} (patch says: {m.group(0)})")
        if "can't find file to patch" in l or "No file to patch" in l:
            missing = next((h.file for h in patch.hunks if h.file == cur), None) or (patch.files[:1] or ["?"])[0]
            return f"patch {patch.label} does not apply to {given}: {missing}: no such file in the tree"
        if "Reversed (or previously applied) patch detected" in l:
            return (f"patch {patch.label} does not apply to {given}: {cur or '?'}: "
                    "already applied (or reversed)")
        if re.search(r"malformed patch|Only garbage", l):
            return f"patch {patch.label} is malformed: {l.strip()}"
    last = next((l.strip() for l in reversed(lines) if l.strip()), "patch failed")
    return f"patch {patch.label} does not apply to {given}: {last}"


def apply_patch(patch: Patch, tree: os.PathLike | str, given: Optional[str] = None) -> None:
    """Apply exactly (dry run first: a failing patch changes nothing); PatchFailed with the hunk."""
    import shutil

    from scopecheck.errors import ToolMissing
    from scopecheck.kernels.build import PatchFailed

    if shutil.which("patch") is None:
        raise ToolMissing("patch", "patch")
    tree = Path(tree)
    given = given or str(tree)
    env = dict(os.environ, LC_ALL="C", LANG="C")
    data = patch.diff.encode("utf-8", "surrogateescape")
    cmd = ["patch", *PATCH_ARGS, "-d", str(tree)]
    r = subprocess.run(cmd[:1] + ["--dry-run"] + cmd[1:], input=data, capture_output=True, env=env, timeout=300)
    if r.returncode == 0:
        r = subprocess.run(cmd, input=data, capture_output=True, env=env, timeout=300)
    if r.returncode != 0:
        out = (r.stdout + r.stderr).decode(errors="replace")
        raise PatchFailed(describe_failure(patch, given, out))
