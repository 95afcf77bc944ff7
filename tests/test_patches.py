"""scopecheck.kernels.patches: format-patch files, saved mails, mboxes of a series, exact application.

The inputs are made here with real git (format-patch, --cover-letter, --stdout) on a small
throwaway repository, and re-encoded as a mail client would (quoted-printable, base64,
an attachment); none of it is kernel code.
"""

from __future__ import annotations

import email.charset
import email.mime.multipart
import email.mime.text
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from scopecheck.errors import InputError
from scopecheck.kernels.build import PatchFailed
from scopecheck.kernels.patches import (apply_patch, build_patch_files, materialize, parse_subject, read_mbox,
                                        read_patch)

pytestmark = pytest.mark.skipif(shutil.which("git") is None or shutil.which("patch") is None,
                                reason="git and patch are needed to make and apply the test patches")

HELLO = "".join(f"int f{i}(int x)\n{{\n\treturn x + {i};\n}}\n\n" for i in range(12))


def _git(repo: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "Ann Dev", "GIT_AUTHOR_EMAIL": "ann@example.org", "GIT_COMMITTER_NAME": "Ann Dev",
           "GIT_COMMITTER_EMAIL": "ann@example.org", "GIT_AUTHOR_DATE": "2024-01-02T03:04:05Z",
           "GIT_COMMITTER_DATE": "2024-01-02T03:04:05Z", "HOME": str(repo), "PATH": "/usr/bin:/bin"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=env).stdout


@pytest.fixture()
def repo(tmp_path) -> Path:
    """A repository with a base commit and three commits on top (the 'series')."""
    r = tmp_path / "repo"
    r.mkdir()
    _git(r, "init", "-q", "-b", "main")
    (r / "src").mkdir()
    (r / "src/hello.c").write_text(HELLO)
    (r / "README").write_text("readme\n")
    _git(r, "add", ".")
    _git(r, "commit", "-q", "-m", "base")
    _git(r, "tag", "base")
    edits = [
        ("src/hello.c", "return x + 3;", "return x + 33;", "hello: f3 adds 33 (caf\u00e9 na\u00efve \u00fcber)"),
        ("src/hello.c", "return x + 9;", "return x * 9;", "hello: f9 multiplies"),
        ("README", "readme\n", "readme\nsecond line\n", "README: a second line"),
    ]
    for path, old, new, msg in edits:
        p = r / path
        p.write_text(p.read_text().replace(old, new))
        _git(r, "commit", "-q", "-am", msg, "-m", "A body line.\n\nSigned-off-by: Ann Dev <ann@example.org>")
    return r


def _format_patch(repo: Path, out: Path, *extra: str) -> list[Path]:
    out.mkdir(exist_ok=True)
    names = _git(repo, "format-patch", "-o", str(out), *extra, "base..main").split()
    return [Path(n) for n in names]


def _pristine(repo: Path, dest: Path) -> Path:
    """The base commit's tree (what the series applies to)."""
    dest.mkdir()
    subprocess.run(f"git -C {repo} archive base | tar -x -C {dest}", shell=True, check=True)
    return dest


# ---------------------------------------------------------------- subjects

@pytest.mark.parametrize("raw, subject, number, total, version", [
    ("[PATCH 2/3] KVM: arm64: foo", "KVM: arm64: foo", 2, 3, None),
    ("[RFC PATCH v2 07/30] KVM: arm64: bar", "KVM: arm64: bar", 7, 30, 2),
    ("[PATCH v3 0/5] the cover", "the cover", 0, 5, 3),
    ("[PATCH] single", "single", None, None, None),
    ("[PATCH net-next,v4,1/2] net: x", "net: x", 1, 2, 4),
    ("[RFC] [PATCH 1/2] two tag groups", "two tag groups", 1, 2, None),
    ("no tags", "no tags", None, None, None),
])
def test_parse_subject(raw, subject, number, total, version):
    s, info = parse_subject(raw)
    assert (s, info["number"], info["total"], info["version"]) == (subject, number, total, version)


# ---------------------------------------------------------------- format-patch files

def test_format_patch_files(repo, tmp_path):
    files = _format_patch(repo, tmp_path / "out")
    assert [f.name[:5] for f in files] == ["0001-", "0002-", "0003-"]
    p1, p2, p3 = (read_patch(f) for f in files)
    assert (p1.number, p1.total, p1.subject) == (1, 3, "hello: f3 adds 33 (caf\u00e9 na\u00efve \u00fcber)")
    assert p2.subject == "hello: f9 multiplies" and p3.files == ["README"]
    assert p1.files == ["src/hello.c"] and p1.author == "Ann Dev <ann@example.org>"
    assert p1.hunks[0].header.startswith("@@ -") and p1.hunks[0].file == "src/hello.c"
    # the signature ("-- " then git's version) is not part of the diff; the diff starts at its header
    assert p1.diff.startswith("diff --git a/src/hello.c b/src/hello.c")
    assert "\n-- \n" not in p1.diff and "Signed-off-by" not in p1.diff
    tree = _pristine(repo, tmp_path / "tree")
    for p in (p1, p2, p3):
        apply_patch(p, tree)
    assert (tree / "src/hello.c").read_text() == (repo / "src/hello.c").read_text()
    assert (tree / "README").read_text() == (repo / "README").read_text()


def test_numbered_single_and_bare_diff(repo, tmp_path):
    (f,) = _format_patch(repo, tmp_path / "one", "-1", "-N")  # no [PATCH n/m]: a single patch
    p = read_patch(f)
    assert p.number is None and p.subject == "README: a second line"
    bare = tmp_path / "bare.diff"
    bare.write_text(_git(repo, "diff", "base", "main", "--", "README"))
    b = read_patch(bare)
    assert b.subject == "bare" and b.files == ["README"] and b.diff == bare.read_text()


def test_signature_line_inside_a_hunk_is_kept(tmp_path):
    """A hunk that removes a line reading '- ' looks like a signature; counting hunk lines tells them apart."""
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "a.txt").write_text("one\n- \nthree\n")
    patch = tmp_path / "x.patch"
    patch.write_text("Subject: [PATCH] drop the dash\n\n---\n a.txt | 1 -\n\n"
                     "--- a/a.txt\n+++ b/a.txt\n@@ -1,3 +1,2 @@\n one\n-- \n three\n-- \n2.39.2\n\n")
    p = read_patch(patch)
    assert p.diff.endswith(" three\n") and "2.39.2" not in p.diff
    apply_patch(p, tree)
    assert (tree / "a.txt").read_text() == "one\nthree\n"


# ---------------------------------------------------------------- mails

def _mail_with_body(fp: Path, encoding: str) -> bytes:
    """The format-patch mail re-sent by a mail client: body in quoted-printable or base64."""
    text = fp.read_text()
    _, body = text.split("\n\n", 1)
    subject = email.message_from_string(text)["Subject"]  # as git encoded and folded it
    cs = email.charset.Charset("utf-8")
    cs.body_encoding = email.charset.QP if encoding == "qp" else email.charset.BASE64
    msg = email.mime.text.MIMEText(body, "plain", cs)
    assert msg["Content-Transfer-Encoding"] == ("quoted-printable" if encoding == "qp" else "base64")
    msg["Subject"] = subject
    msg["From"] = "Ann Dev <ann@example.org>"
    msg["Message-ID"] = "<20240102.1@example.org>"
    return msg.as_bytes()


@pytest.mark.parametrize("encoding", ["qp", "base64"])
def test_encoded_mail(repo, tmp_path, encoding):
    files = _format_patch(repo, tmp_path / "out")
    raw = _mail_with_body(files[0], encoding)
    if encoding == "qp":
        assert b"=3D" in raw or b"=\n" in raw or b"=C3" in raw  # really quoted-printable
    else:
        assert b"diff --git" not in raw
    mail = tmp_path / f"saved-{encoding}.eml"
    mail.write_bytes(raw)
    p = read_patch(mail)
    assert p.subject == "hello: f3 adds 33 (caf\u00e9 na\u00efve \u00fcber)" and (p.number, p.total) == (1, 3)
    assert p.message_id == "<20240102.1@example.org>"
    assert p.diff == read_patch(files[0]).diff
    tree = _pristine(repo, tmp_path / "tree")
    apply_patch(p, tree)
    assert "return x + 33;" in (tree / "src/hello.c").read_text()
    # kernel build --patch decodes such a mail into a plain file patch(1) can read
    (plain,) = build_patch_files([mail])
    assert plain != mail and "diff --git" in plain.read_text()
    assert build_patch_files([files[1]]) == [files[1]]  # a plain format-patch file is passed as it is


def test_patch_as_attachment(repo, tmp_path):
    files = _format_patch(repo, tmp_path / "out")
    msg = email.mime.multipart.MIMEMultipart()
    msg["Subject"] = "[PATCH 2/3] hello: f9 multiplies"
    msg.attach(email.mime.text.MIMEText("Please apply the attached patch.\n", "plain"))
    att = email.mime.text.MIMEText(read_patch(files[1]).diff, "x-patch")
    att.add_header("Content-Disposition", "attachment", filename="0002.patch")
    msg.attach(att)
    mail = tmp_path / "att.eml"
    mail.write_bytes(msg.as_bytes())
    p = read_patch(mail)
    assert p.number == 2 and p.diff == read_patch(files[1]).diff


# ---------------------------------------------------------------- mbox

def _mbox(repo: Path, tmp_path: Path, *extra: str) -> list[bytes]:
    """The messages of `git format-patch --stdout --cover-letter` (one bytes per message)."""
    out = subprocess.run(["git", "-C", str(repo), "format-patch", "--stdout", "--cover-letter", *extra,
                          "base..main"], check=True, capture_output=True).stdout
    msgs, cur = [], []
    for line in out.splitlines(keepends=True):
        if line.startswith(b"From ") and line.rstrip().endswith(b"2001") and cur:
            msgs.append(b"".join(cur))
            cur = []
        cur.append(line)
    msgs.append(b"".join(cur))
    return msgs


def test_mbox_cover_letter_and_order(repo, tmp_path):
    msgs = _mbox(repo, tmp_path, "--subject-prefix=RFC PATCH", "-v2")
    assert len(msgs) == 4 and b"0/3" in msgs[0]
    shuffled = [msgs[2], msgs[0], msgs[3], msgs[1]]  # as a list archive may hand them out
    # a reply in the thread is skipped too
    reply = (b"From nobody Mon Sep 17 00:00:00 2001\nFrom: Rev <r@example.org>\n"
             b"Subject: Re: [RFC PATCH v2 2/3] hello: f9 multiplies\n\n> diff --git a/x b/x\nLooks good.\n\n")
    box = tmp_path / "series.mbox"
    box.write_bytes(b"".join(shuffled) + reply)
    patches = read_mbox(box)
    assert [p.number for p in patches] == [1, 2, 3]
    assert [p.subject for p in patches] == ["hello: f3 adds 33 (caf\u00e9 na\u00efve \u00fcber)",
                                            "hello: f9 multiplies", "README: a second line"]
    assert all(p.version == 2 and "RFC" in p.tags for p in patches)
    tree = _pristine(repo, tmp_path / "tree")
    for p in patches:
        apply_patch(p, tree)
    assert (tree / "src/hello.c").read_text() == (repo / "src/hello.c").read_text()
    files = build_patch_files(mbox=box)
    assert [f.name for f in files] == ["series.mbox-0001.patch", "series.mbox-0002.patch", "series.mbox-0003.patch"]
    assert read_patch(files[1]).subject == "hello: f9 multiplies"


def test_mbox_incomplete_or_mixed(repo, tmp_path):
    msgs = _mbox(repo, tmp_path)
    box = tmp_path / "gap.mbox"
    box.write_bytes(msgs[0] + msgs[1] + msgs[3])
    with pytest.raises(InputError, match=r"incomplete: patch 2/3 is missing"):
        read_mbox(box)
    v2 = _mbox(repo, tmp_path, "-v2")
    box.write_bytes(b"".join(msgs[1:]) + b"".join(v2[1:]))
    with pytest.raises(InputError, match="more than one version"):
        read_mbox(box)
    box.write_bytes(msgs[0])
    with pytest.raises(InputError, match="no patches in the mbox"):
        read_mbox(box)
    box.write_text("not an mbox\n")
    with pytest.raises(InputError, match="not an mbox"):
        read_mbox(box)


# ---------------------------------------------------------------- failures

def test_failing_hunk_is_named(repo, tmp_path):
    files = _format_patch(repo, tmp_path / "out")
    tree = _pristine(repo, tmp_path / "tree")
    (tree / "src/hello.c").write_text(HELLO.replace("return x + 9;", "return x - 9;"))  # patch 2's context
    before = (tree / "src/hello.c").read_text()
    p2 = read_patch(files[1])
    with pytest.raises(PatchFailed) as e:
        apply_patch(p2, tree, "the-tree")
    msg = str(e.value)
    assert "0002-hello-f9-multiplies.patch 2/3: hello: f9 multiplies" in msg
    assert "does not apply to the-tree" in msg
    assert f"first failing hunk: src/hello.c {p2.hunks[0].header}" in msg and "Hunk #1 FAILED" in msg
    assert (tree / "src/hello.c").read_text() == before  # nothing half-applied
    # a file the tree does not have
    (tree / "README").unlink()
    with pytest.raises(PatchFailed, match="README: no such file in the tree"):
        apply_patch(read_patch(files[2]), tree)
    # applied twice
    apply_patch(read_patch(files[0]), tree)
    with pytest.raises(PatchFailed, match="already applied"):
        apply_patch(read_patch(files[0]), tree)


def test_not_a_patch(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("Subject: hello\n\njust words\n")
    with pytest.raises(InputError, match="no unified diff"):
        read_patch(f)
    with pytest.raises(InputError, match="no such patch file"):
        read_patch(tmp_path / "missing.patch")
    (tmp_path / "bin.patch").write_bytes(b"\0\1\2")
    with pytest.raises(InputError, match="binary file"):
        read_patch(tmp_path / "bin.patch")


def test_materialize_is_content_addressed(repo, tmp_path):
    (f,) = _format_patch(repo, tmp_path / "o", "-1")
    p = read_patch(f)
    a, b = materialize(p, tmp_path / "m"), materialize(read_patch(f), tmp_path / "m")
    assert a == b and read_patch(a).diff == p.diff and read_patch(a).subject == p.subject


# ---------------------------------------------------------------- the series work tree (no build)

def test_workdir_reset_restores_only_what_patches_changed(repo, tmp_path):
    """Apply a series to the work copy, reset: changed files come back with a new mtime, others keep theirs."""
    import os
    import time

    from scopecheck.kernels.build import SourceTree
    from scopecheck.kernels.workdir import Workdir

    src = _pristine(repo, tmp_path / "src")
    source = SourceTree(dir=src, identity="test", version="0", given="src")
    wd = Workdir(tmp_path / "wd", source, "pkvm-tiny", False, 1)
    assert wd.reset() == []
    readme_mtime = os.stat(wd.tree / "README").st_mtime_ns
    hello_mtime = os.stat(wd.tree / "src/hello.c").st_mtime_ns
    assert hello_mtime == os.stat(src / "src/hello.c").st_mtime_ns  # the copy keeps mtimes
    files = _format_patch(repo, tmp_path / "out")
    new_file = tmp_path / "new.patch"
    new_file.write_text("--- /dev/null\n+++ b/src/new.c\n@@ -0,0 +1 @@\n+int n;\n")
    time.sleep(0.01)
    for f in (files[0], files[1], new_file):
        wd.apply(read_patch(f))
    assert (wd.tree / "src/new.c").is_file() and "x * 9" in (wd.tree / "src/hello.c").read_text()
    restored = wd.reset()
    assert restored == ["src/hello.c", "src/new.c"]
    assert not (wd.tree / "src/new.c").exists()
    assert (wd.tree / "src/hello.c").read_text() == (src / "src/hello.c").read_text()
    assert os.stat(wd.tree / "src/hello.c").st_mtime_ns > hello_mtime  # make will rebuild it
    assert os.stat(wd.tree / "README").st_mtime_ns == readme_mtime  # untouched: not rebuilt
    # a patch that fails changes nothing, and a reset after it has nothing to restore
    with pytest.raises(PatchFailed):
        wd.apply(read_patch(files[1]).__class__(**{**read_patch(files[1]).__dict__,
                                                   "diff": read_patch(files[1]).diff.replace(" int f9", " int g9")}))
    assert wd.reset() == ["src/hello.c"] and (wd.tree / "src/hello.c").read_text() == (src / "src/hello.c").read_text()
    assert os.stat(wd.tree / "src/hello.c").st_mtime_ns > hello_mtime


def test_range_series(repo, tmp_path, monkeypatch):
    from scopecheck.series import range_series

    monkeypatch.setenv("SCOPECHECK_CACHE", str(tmp_path / "cache"))
    base, patches, notes = range_series(repo, "base..main")
    assert [p.subject for p in patches] == ["hello: f3 adds 33 (caf\u00e9 na\u00efve \u00fcber)",
                                            "hello: f9 multiplies", "README: a second line"]
    assert [p.number for p in patches] == [1, 2, 3] and notes == []
    assert base != repo and (base / "README").read_text() == "readme\n"  # HEAD is main: base is exported
    tree = tmp_path / "t"
    shutil.copytree(base, tree)
    for p in patches:
        apply_patch(p, tree)
    assert (tree / "src/hello.c").read_text() == (repo / "src/hello.c").read_text()
    _git(repo, "checkout", "-q", "base")
    assert range_series(repo, "base..main")[0] == repo  # checked out clean at A: SRC itself
    with pytest.raises(InputError, match="unknown revision"):
        range_series(repo, "base..nope")
    with pytest.raises(InputError, match="expected A..B"):
        range_series(repo, "base")
    with pytest.raises(InputError, match="no commits"):
        range_series(repo, "main..base")
