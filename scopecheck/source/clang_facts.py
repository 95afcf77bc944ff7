"""Source facts from C translation units (libclang), cached per translation unit.

:func:`source_facts` parses each compile command's file with libclang, walks every
function *definition* (static inlines from headers included, deduplicated across
translation units by ``(name, file, line)``) and file-scope initialisers, and returns a
:class:`~scopecheck.model_code.SourceFacts`.

Cache: ``cache_dir("source")``; one facts file (typed msgpack, :mod:`scopecheck.cache`) per
translation unit, keyed by sha256 of (scopecheck's code fingerprint, the clang arguments, the main file's content and the content of
every file it includes). An index file per (version, arguments, main file) remembers the
include list of the last parse, so a warm run re-hashes those files and loads the facts
without parsing. A file that cannot be read back is ignored and rewritten.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import asdict, fields
from pathlib import Path
from typing import Callable, Iterable

from scopecheck import __version__
from scopecheck import cache as _cache
from scopecheck.model_code import (AddressTaken, Escalation, FieldAccess, SourceCall, SourceFacts,
                                   SourceFunction, Unanalysed)
from scopecheck.source.provenance import ProvSummary
from scopecheck.paths import atomic_write_bytes, atomic_write_text, cache_dir
from scopecheck.source.compdb import CompileCommand, clang_args

DEFAULT_ROOTS = ("kvm_vcpu", "kvm_vcpu_arch", "kvm_cpu_context", "pkvm_hyp_vcpu", "vcpu_hyp_state")
CACHE_SCHEMA = 5  # 2: byte-range accesses, Unanalysed; 3: SourceCall.args; 4: provenance summaries; 5: header functions not walked carry no per-function entry

#: cumulative counters: ``parsed`` (libclang parses), ``cache_hits``, ``parse_seconds``,
#: ``header_memo_loaded`` (header functions and variables another worker walked)
STATS: Counter = Counter()


# ---------------------------------------------------------------- (de)serialisation

def _dump(rec) -> dict:
    return asdict(rec)


def _load(cls, d: dict):
    kw = {f.name: d[f.name] for f in fields(cls) if f.name in d}
    for name in ("function", "caller", "in_function"):
        if isinstance(kw.get(name), list):
            kw[name] = tuple(kw[name])
    if cls is SourceFunction and "params" in kw:
        kw["params"] = tuple(tuple(p) for p in kw["params"])
    return cls(**kw)


_KINDS = {"functions": SourceFunction, "accesses": FieldAccess, "escalations": Escalation,
          "calls": SourceCall, "address_taken": AddressTaken, "unanalysed": Unanalysed,
          "provenance": ProvSummary}


def _deep_tuple(v):
    return tuple(_deep_tuple(x) for x in v) if isinstance(v, list) else v


class TUFacts:
    """What one translation unit yielded, grouped by function key for cross-TU dedupe."""

    def __init__(self):
        self.functions: list[SourceFunction] = []
        self.per_function: dict[tuple, dict[str, list]] = {}
        self.file_scope: list[AddressTaken] = []
        self.diagnostics: list[str] = []
        self.includes: list[str] = []
        #: keys of the header functions among ``functions`` (shared with other TUs through
        #: ``_HEADER_FUNCTIONS``; not cached)
        self.shared: set = set()
        #: what a caller's hook read from the parsed translation unit (:func:`parse_tu`'s
        #: ``also``; None when the TU came from the cache; not cached)
        self.also = None

    def to_json(self) -> dict:
        return {"functions": [_dump(f) for f in self.functions],
                "per_function": [[list(k), {n: [_dump(r) for r in v] for n, v in d.items()}]
                                 for k, d in self.per_function.items()],
                "file_scope": [_dump(a) for a in self.file_scope],
                "diagnostics": self.diagnostics, "includes": self.includes}

    def to_wire(self) -> tuple:
        """For :mod:`scopecheck.cache` (typed msgpack): records stay dataclasses, keys become tuples."""
        # provenance summaries hold symbolic, mixed-type lists: they travel as JSON text
        return (self.functions, [(tuple(k), {n: v for n, v in d.items() if n != "provenance"})
                                 for k, d in self.per_function.items()], self.file_scope,
                self.diagnostics, self.includes,
                [json.dumps([list(k), [_dump(r) for r in d.get("provenance", ())]])
                 for k, d in self.per_function.items()])

    @classmethod
    def from_wire(cls, w: tuple) -> "TUFacts":
        t = cls()
        functions, per_function, t.file_scope, t.diagnostics, t.includes, prov = w
        t.functions = functions
        t.per_function = {tuple(k): d for k, d in per_function}
        for text in prov:
            k, recs = json.loads(text)
            if recs:
                t.per_function.setdefault(_deep_tuple(k), {})["provenance"] = [_load(ProvSummary, r) for r in recs]
        return t

    @classmethod
    def from_json(cls, d: dict) -> "TUFacts":
        t = cls()
        t.functions = [_load(SourceFunction, f) for f in d["functions"]]
        for k, recs in d["per_function"]:
            t.per_function[tuple(k)] = {n: [_load(_KINDS[n], r) for r in v] for n, v in recs.items()}
        t.file_scope = [_load(AddressTaken, a) for a in d["file_scope"]]
        t.diagnostics = list(d["diagnostics"])
        t.includes = list(d["includes"])
        return t


# ---------------------------------------------------------------- parsing one TU

#: ((header file, its mtime and size, report root, roots, the arguments' key), offset, n-th there) ->
#: (SourceFunction, its per-function records or None) of a function defined outside the main
#: file. Every hyp translation unit includes the same kvm headers: of the ~4,500 function
#: definitions 21 6.1 hyp TUs walk, 626 are distinct. A header function is walked once per
#: process and copied into every TU that defines it, which is what the merge of
#: :func:`source_facts` assumes anyway (the first TU's version of a header function is the one
#: kept). Cleared per :func:`source_facts` call, so worker processes forked for it start from
#: that call's state.
_HEADER_FUNCTIONS: dict = {}
#: the same for file-scope variables defined outside the main file: key -> their AddressTaken records
_HEADER_VARIABLES: dict = {}
#: keys of the two memos this process computed itself and has not yet published (:func:`_publish`)
_LOCAL_NEW: list = []
#: files of another worker's memo entries this process has read (:func:`_load_published`)
_LOADED: set = set()


def _publish(share: str | None) -> None:
    """Write the header memo entries this worker computed since its last call where the other
    workers of this run read them (:func:`_load_published`): each hyp TU's first worker to walk
    the kvm headers saves the others from walking them again (~0.6 s of CPU per worker on 6.1).
    Entries are data, not pickles: the cache's typed msgpack (:mod:`scopecheck.cache`, checksummed)
    of the records in :class:`TUFacts`' wire form. Written whole under a temporary name, then
    renamed: a reader sees all of a file or nothing."""
    if not share or not _LOCAL_NEW:
        return
    fkeys = [k for kind, k in _LOCAL_NEW if kind == "f"]
    vkeys = [k for kind, k in _LOCAL_NEW if kind == "v"]
    _LOCAL_NEW.clear()
    tf = TUFacts()  # the functions in order; their walks keyed by position (one key may repeat a name)
    for i, k in enumerate(fkeys):
        rec, per = _HEADER_FUNCTIONS[k]
        tf.functions.append(rec)
        if per is not None:
            tf.per_function[(i,)] = per
    name = os.path.join(share, f"{os.getpid()}.{len(_LOADED)}.{time.monotonic_ns()}")
    try:
        data = _cache.dumps((fkeys, tf.to_wire(), vkeys, [_HEADER_VARIABLES[k] for k in vkeys]))
        with open(name + ".tmp", "wb") as fh:
            fh.write(data)
        os.replace(name + ".tmp", name + ".memo")
    except (OSError, _cache.Unsupported):  # a full or vanished directory: the others walk the headers themselves
        pass


def _load_published(share: str | None) -> None:
    """Take the header memo entries other workers of this run published (:func:`_publish`) and
    this process does not have yet. Only a speed-up: what a worker finds nothing for (or cannot
    read back), it walks. The memo's keys name the header file with its mtime and size, the roots
    and the clang arguments, so an entry is used only where this process would have computed the same."""
    if not share:
        return
    try:
        names = sorted(n for n in os.listdir(share)
                       if n.endswith(".memo") and n not in _LOADED and not n.startswith(f"{os.getpid()}."))
    except OSError:
        return
    for n in names:
        _LOADED.add(n)
        try:
            with open(os.path.join(share, n), "rb") as fh:
                fkeys, wire, vkeys, variables = _cache.loads(fh.read())
            tf = TUFacts.from_wire(wire)
        except (OSError, ValueError, TypeError, KeyError):
            continue
        for i, (k, rec) in enumerate(zip(fkeys, tf.functions)):
            _HEADER_FUNCTIONS.setdefault(_deep_tuple(k), (rec, tf.per_function.get((i,))))
        for k, v in zip(vkeys, variables):
            _HEADER_VARIABLES.setdefault(_deep_tuple(k), v)
        STATS["header_memo_loaded"] += len(fkeys) + len(vkeys)


def _args_key(args: list[str]) -> str:
    """The clang arguments that can change a header function's body: all but the main file's
    name in kbuild's per-object defines (KBUILD_BASENAME and friends)."""
    return hashlib.sha256("\0".join(a for a in args if "KBUILD_" not in a).encode()).hexdigest()


def _header_key(f, off: int, ctx, relroot: str, files: dict, args_key: str, nth: dict):
    """The memo key of a function defined outside the main file, or None.

    A function is named by where its name is expanded and by how many definitions this TU had
    there before it (one macro expansion can define several functions): asking libclang for
    each cursor's spelling costs more than the rest of the key. ``f``, ``off``: the file handle
    and offset :func:`clangext.top_level` gives; ``files``: this TU's handle -> key prefix
    (False for the main file and unreadable files)."""
    prefix = files.get(f)
    if prefix is None:
        prefix = files[f] = _file_prefix(f, ctx, relroot, args_key)
    if prefix is False:
        return None
    at = (f, off)
    n = nth[at] = nth.get(at, -1) + 1
    return (prefix, off, n)


def _file_prefix(f, ctx, relroot: str, args_key: str):
    """The part of a header function's memo key its file gives: (name, stamp), the report root,
    the roots and the arguments' key; False for no file, the main file or an unreadable file."""
    from scopecheck.source import clangext as cx

    if not f:
        return False
    name = os.path.normpath(cx.file_name(f))
    if name == ctx.main_file:
        return False
    k = (name, relroot, ctx.roots, args_key)
    prefix = _PREFIXES.get(k)
    if prefix is None:
        try:
            o = os.stat(name)
            prefix = (name, (o.st_mtime_ns, o.st_size), relroot, tuple(sorted(ctx.roots)), args_key)  # plain data: other workers read it
        except OSError:
            prefix = False
        _PREFIXES[k] = prefix
    return prefix


#: (header file, report root, roots, arguments' key) -> its key prefix: a file is stat()ed once
#: per run (cleared with the memos)
_PREFIXES: dict = {}


def _relroot(cmd: CompileCommand, source_root) -> str:
    return os.path.normpath(str(source_root)) if source_root else cmd.directory


def parse_tu(cmd: CompileCommand, roots=DEFAULT_ROOTS, source_root=None, also=None,
             includes: bool = True, share: str | None = None) -> TUFacts:
    """Parse one translation unit and walk it (no cache). ``also``: None, or ``(function,
    arguments)``: ``function(tu, *arguments)`` is kept as the result's ``also`` (a module-level
    function, so that it reaches worker processes), run after the walk. ``includes``: list the
    included files (the cache's key needs them; nothing else does). ``share``: a directory
    where the workers of one run publish the header functions they walked to each other."""
    import clang.cindex as ci

    from scopecheck.source import clangext as cx
    from scopecheck.source import walker as w
    from scopecheck.source.provenance import walker_class

    out = TUFacts()
    rel = w.relpath_fn(_relroot(cmd, source_root))
    args = clang_args(cmd)
    t0 = time.perf_counter()
    try:
        tu = ci.Index.create().parse(cmd.file, args=args,
                                     options=0)
    except ci.TranslationUnitLoadError as e:
        out.diagnostics.append(f"{rel(cmd.file)}: libclang could not parse the file ({e})")
        return out
    finally:
        STATS["parsed"] += 1
        STATS["parse_seconds"] += time.perf_counter() - t0
    for d in tu.diagnostics:
        if d.severity >= ci.Diagnostic.Error:
            loc = d.location
            where = f"{rel(loc.file.name)}:{loc.line}" if loc.file else rel(cmd.file)
            out.diagnostics.append(f"{where}: {d.spelling}")
    if includes:
        out.includes = sorted({os.path.normpath(i.include.name) for i in tu.get_includes()})
    _load_published(share)  # after the parse: another worker may have walked the headers meanwhile
    ctx = w.Context(tu, roots, rel)
    seen = set()
    relroot = _relroot(cmd, source_root)
    args_key = _args_key(args)
    files: dict = {}
    nth: dict = {}
    var_nth: dict = {}
    for kind, c, f, off, line, col in cx.top_level(tu):
        if kind == cx.FUNCTION_DEFINITION:
            hk = _header_key(f, off, ctx, relroot, files, args_key, nth)
            hit = _HEADER_FUNCTIONS.get(hk) if hk is not None else None
            if hit is None:
                if hk is not None and not ctx.worth_walking(c):
                    # a generic header function that never names a root (most of the ~5,000
                    # static inlines every hyp TU includes) gives only its SourceFunction record
                    hit = (w.function_record(c, ctx, (f, line, col)), None)
                else:
                    wk = walker_class()(c, ctx)
                    if wk.key in seen:
                        continue
                    wk.run()
                    per = {"accesses": wk.accesses, "escalations": wk.escalations,
                           "calls": wk.calls, "address_taken": wk.address_taken}
                    if wk.unanalysed:
                        per["unanalysed"] = wk.unanalysed
                    per["provenance"] = [wk.prov]
                    hit = (wk.function(), per)
                if hk is not None:
                    _HEADER_FUNCTIONS[hk] = hit
                    _LOCAL_NEW.append(("f", hk))
            rec, per = hit
            key = rec.key
            if key in seen:
                continue
            seen.add(key)
            out.functions.append(rec)
            if hk is not None:
                out.shared.add(key)
            if per is not None:
                out.per_function[key] = per
        elif f:  # a file-scope variable: a header's are read once per process, like its functions
            hk = _header_key(f, off, ctx, relroot, files, args_key, var_nth)
            hit = _HEADER_VARIABLES.get(hk) if hk is not None else None
            if hit is None:
                hit = w.file_scope_address_taken(c, ctx)
                if hk is not None:
                    _HEADER_VARIABLES[hk] = hit
                    _LOCAL_NEW.append(("v", hk))
            out.file_scope.extend(hit)
    _publish(share)
    if also is not None:  # after the walk and its publication: the other workers wait for that, not for this
        out.also = also[0](tu, *also[1])
    return out


# ---------------------------------------------------------------- cache

def _sha_file(path: str, memo: dict) -> str:
    h = memo.get(path)
    if h is None:
        try:
            h = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except OSError:
            h = "missing"
        memo[path] = h
    return h


def _tu_key(args: list[str], main: str, includes: list[str], memo: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([CACHE_SCHEMA, __version__, _cache.code_fingerprint(), args, main]).encode())
    for p in [main, *includes]:
        h.update(p.encode() + b"\0" + _sha_file(p, memo).encode() + b"\0")
    return h.hexdigest()


def _read_json(p: Path):
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def _read_facts(p: Path) -> "TUFacts | None":
    """A cached TUFacts (typed msgpack, :mod:`scopecheck.cache`); a damaged entry is reported and None."""
    wire = _cache.read(p)
    if wire is None:
        return None
    try:
        return TUFacts.from_wire(wire)
    except (TypeError, ValueError, KeyError) as e:
        _cache.report_bad(p, f"unexpected shape: {e}")
        return None


def _index_path(args, cmd: CompileCommand, roots, source_root) -> tuple[Path, Path]:
    """The cache dir and the TU's index file (which names its includes, hence its facts key)."""
    d = cache_dir("source")
    ident = hashlib.sha256(json.dumps([CACHE_SCHEMA, __version__, _cache.code_fingerprint(), args, cmd.file,
                                       sorted(roots), str(source_root)]).encode()).hexdigest()
    return d, d / f"{ident}.index.json"


def _last_key(cmd: CompileCommand, roots, source_root, memo: dict) -> tuple[Path, Path, str | None]:
    """(cache dir, the TU's index file, the facts key its last parse's include list gives today,
    or None when it was never cached)."""
    args = clang_args(cmd)
    d, index_p = _index_path(args, cmd, roots, source_root)
    idx = _read_json(index_p)
    if not (isinstance(idx, dict) and isinstance(idx.get("includes"), list)):
        return d, index_p, None
    _cache.touch(index_p)  # used: kept by the cache's least-recently-used pruning
    return d, index_p, _tu_key(args + sorted(roots), cmd.file, idx["includes"], memo)


def cached_tu(cmd: CompileCommand, roots, source_root, cache: bool, memo: dict, also=None,
              share: str | None = None) -> TUFacts:
    if not cache or not _cache.enabled():
        return parse_tu(cmd, roots, source_root, also, includes=False, share=share)
    d, index_p, key = _last_key(cmd, roots, source_root, memo)
    if key is not None:
        facts = _read_facts(d / f"{key}.facts.msgpack")
        if isinstance(facts, TUFacts):
            STATS["cache_hits"] += 1
            return facts
    facts = parse_tu(cmd, roots, source_root, also, share=share)
    if any("could not parse" in x for x in facts.diagnostics):
        return facts
    key = _tu_key(clang_args(cmd) + sorted(roots), cmd.file, facts.includes, memo)
    if not _cache.write(d / f"{key}.facts.msgpack", facts.to_wire()):
        return facts
    atomic_write_text(index_p, json.dumps({"file": cmd.file, "includes": facts.includes, "key": key}))
    return facts


# ---------------------------------------------------------------- the public entry

def _selected(cmd: CompileCommand, files) -> bool:
    if files is None:
        return True
    for pat in files:
        pat = str(pat)
        if cmd.file == os.path.normpath(os.path.join(cmd.directory, pat)) or \
                fnmatch.fnmatch(cmd.file, pat) or fnmatch.fnmatch(cmd.file, "*/" + pat.lstrip("/")):
            return True
    return False


def source_facts(commands: Iterable[CompileCommand], roots=DEFAULT_ROOTS, files=None, cache: bool = True,
                 progress: Callable[[str], None] | None = None, source_root=None) -> SourceFacts:
    """Field accesses, escalations, calls and address-taken functions of the C files in ``commands``.

    ``files``: None for every C entry, else paths or glob patterns (``arch/arm64/kvm/hyp/nvhe/*.c``)
    matched against each entry's absolute file. Assembly entries are skipped (see
    :mod:`scopecheck.source.asm_offsets`). ``source_root``: report files relative to it
    (default: each entry's directory). A translation unit that cannot be parsed becomes a
    diagnostic. Functions defined in several translation units (static inlines in headers)
    are reported once.
    """
    return start_source_facts(commands, roots, files, cache, progress, source_root).result()


#: :meth:`PendingSourceFacts.first` when no worker ran the job
NOT_RUN = object()


class PendingSourceFacts:
    """:func:`source_facts` started: the translation units the cache lacks are parsed in worker
    processes while the caller does other work (the scope proof reads the binary meanwhile);
    :meth:`result` waits for them and merges. Workers are forked when it is made, from the
    calling thread."""

    def __init__(self, cmds, roots, source_root, cache: bool, progress, also=None, first=None):
        self.cmds, self.roots, self.source_root, self.cache, self.progress = cmds, tuple(roots), source_root, cache, progress
        self.memo: dict = {}
        self._facts: SourceFacts | None = None
        self._pool = None
        self._futures: dict = {}
        #: (file, (function, arguments)): the hook the worker parsing that file runs (:meth:`also`)
        self._also = also
        #: (function, arguments): a job for the first free worker, before any translation unit
        #: (:meth:`first`); its future once submitted
        self._first_job, self._first = first, None
        whole = _whole_path(cmds, self.roots, source_root, self.memo) if cache and _cache.enabled() else None
        if whole is not None:
            hit = _cache.read(whole)
            if isinstance(hit, SourceFacts):
                STATS["cache_hits"] += len(cmds)
                STATS["whole_program_hits"] += 1
                self._facts = hit
                return
        _HEADER_FUNCTIONS.clear()  # one run's memo (a library caller may run many: it must not grow)
        _HEADER_VARIABLES.clear()
        _LOCAL_NEW.clear()
        _LOADED.clear()
        _PREFIXES.clear()
        _SENT.clear()
        self._share: str | None = None  # the workers' header memos (:func:`_publish`), removed by close()
        self._start_workers()

    def _start_workers(self) -> None:
        """Translation units missing from the cache go to one worker process per core (libclang
        parses and walks are CPU-bound), biggest first so that no worker is left with a big
        one at the end; the rest are read in :meth:`result`."""
        cmds = self.cmds
        if len(cmds) <= 2 or (os.cpu_count() or 1) <= 1:
            return
        todo = [c for c in cmds if not self.cache or not _cached_only(c, self.roots, self.source_root, self.memo)]
        if len(todo) < 2:
            return
        import concurrent.futures as cf
        import multiprocessing as mp
        import tempfile

        try:
            self._share = tempfile.mkdtemp(prefix="scopecheck-headers-")
        except OSError:  # nowhere to share: each worker walks the headers itself
            self._share = None
        try:
            self._pool = cf.ProcessPoolExecutor(max_workers=min(os.cpu_count() or 1, len(todo)),
                                                mp_context=mp.get_context("fork"))
            also_file = self._also[0] if self._also else None
            if self._first_job is not None:
                self._first = self._pool.submit(self._first_job[0], *self._first_job[1])
            # the hook's TU first: the caller waits for it while the others parse
            for c in sorted(todo, key=lambda c: (c.file != also_file, -_weight(c))):
                self._futures[c.file, c.arguments] = self._pool.submit(
                    _tu_job, (c, self.roots, self.source_root, self.cache,
                              self._also[1] if c.file == also_file else None, self._share))
        except OSError:  # no worker processes here: everything is done in this one
            self.close()

    def close(self) -> None:
        """Stop the workers (after :meth:`result`, or without a result when the caller gave up)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool, self._futures = None, {}
        if getattr(self, "_share", None):
            import shutil

            shutil.rmtree(self._share, ignore_errors=True)
            self._share = None

    def also(self):
        """What the hook given to :func:`start_source_facts` read from its translation unit, or
        None when no worker parsed that unit (it came from the cache, or there are no workers):
        waits for that one unit only."""
        import concurrent.futures as cf

        if not self._also or self._facts is not None:
            return None
        for (file, _args), fut in self._futures.items():
            if file == self._also[0]:
                try:
                    return fut.result()[7]
                except (OSError, cf.process.BrokenProcessPool):
                    return None
        return None

    def first(self):
        """The result of the ``first`` job given to :func:`start_source_facts`, run by a worker
        (its exception is raised here), or :data:`NOT_RUN` when no worker ran it (no workers:
        everything came from the cache, one core, or a worker died): the caller runs it itself."""
        import concurrent.futures as cf

        if self._first is None:
            return NOT_RUN
        try:
            return self._first.result()
        except (OSError, cf.process.BrokenProcessPool, cf.CancelledError):
            return NOT_RUN

    def _facts_of(self):
        """(command, TUFacts) in the commands' order."""
        import concurrent.futures as cf

        done: dict = {}
        if self._futures:
            try:
                names = list(self._futures)
                for name, tf in zip(names, _expand([self._futures[n].result() for n in names])):
                    done[name] = tf
                    STATS["parsed"] += 1  # parsed in a worker
            except (OSError, cf.process.BrokenProcessPool):
                done = {}  # a worker died: everything is done in this process
            self.close()
        for c in self.cmds:
            tf = done.get((c.file, c.arguments))
            yield c, tf if tf is not None else cached_tu(c, self.roots, self.source_root, self.cache, self.memo)

    def result(self) -> SourceFacts:
        if self._facts is None:
            try:
                self._facts = _merge(self.cmds, self._facts_of(), self.progress)
            finally:
                self.close()
            if self.cache and _cache.enabled():
                whole = _whole_path(self.cmds, self.roots, self.source_root, self.memo)  # every TU is cached now
                if whole is not None:
                    _cache.write(whole, self._facts)
        return self._facts


def start_source_facts(commands: Iterable[CompileCommand], roots=DEFAULT_ROOTS, files=None, cache: bool = True,
                       progress: Callable[[str], None] | None = None, source_root=None,
                       also: tuple | None = None, first: tuple | None = None) -> PendingSourceFacts:
    """:func:`source_facts`, started in the background: call ``.result()`` for the facts.

    ``also``: None, or ``(file, function, arguments)``: the worker that parses ``file`` also
    runs ``function(tu, *arguments)`` on its translation unit (a module-level function); ``.also()``
    gives the result (the scope proof reads the assembly's C context from the parse the C door
    does anyway). ``first``: None, or ``(function, arguments)``: a module-level function the first
    free worker runs before any translation unit; ``.first()`` gives its result (the scope proof
    reads the binary there, so that no more processes compete than there are cores)."""
    cmds = [c for c in commands if not c.is_asm and c.file.endswith(".c") and _selected(c, files)]
    return PendingSourceFacts(cmds, roots, source_root, cache, progress,
                              (also[0], (also[1], tuple(also[2]))) if also else None,
                              (first[0], tuple(first[1])) if first else None)


def _whole_path(cmds, roots, source_root, memo) -> Path | None:
    """Where the merged, provenance-resolved facts of exactly these translation units are
    cached: the hash of every TU's facts key, or None while any TU is not cached yet."""
    h = hashlib.sha256(json.dumps([CACHE_SCHEMA, sorted(roots), str(source_root)]).encode())
    d = None
    for c in cmds:
        d, _index_p, key = _last_key(c, roots, source_root, memo)
        if key is None:
            return None
        h.update(key.encode() + b"\0")
    if d is None:
        return None
    return d / f"{h.hexdigest()}.whole.msgpack"


def _merge(cmds, facts_of, progress) -> SourceFacts:
    facts = SourceFacts()
    seen_fn: set = set()
    seen_at: set = set()
    prov_pairs: list = []  # (ProvSummary, that function's accesses) for the whole-program provenance
    for i, (cmd, tf) in enumerate(facts_of, 1):
        if progress:
            progress(f"[{i}/{len(cmds)}] {cmd.file}")
        facts.files.append(cmd.file)
        facts.diagnostics.extend(tf.diagnostics)
        for fn in tf.functions:
            key = fn.key
            if key in seen_fn:
                continue
            seen_fn.add(key)
            facts.functions.append(fn)
            recs = tf.per_function.get(key)
            if recs is None:
                continue
            facts.accesses.extend(recs.get("accesses", ()))
            for ps in recs.get("provenance", ()):
                prov_pairs.append((ps, list(recs.get("accesses", ()))))
            facts.escalations.extend(recs.get("escalations", ()))
            facts.calls.extend(recs.get("calls", ()))
            facts.address_taken.extend(recs.get("address_taken", ()))
            facts.unanalysed.extend(recs.get("unanalysed", ()))
        for a in tf.file_scope:
            k = (a.function, a.file, a.line, a.where)
            if k not in seen_at:
                seen_at.add(k)
                facts.address_taken.append(a)
    from scopecheck.source.provenance import resolve

    resolve(prov_pairs, {a.function for a in facts.address_taken})
    return facts


#: shared header functions this worker process has already sent to the parent: key -> the
#: number it was sent under (its rank among them)
_SENT: dict = {}


def _tu_job(args):
    """A worker's TU: a header function it already sent travels as the number it was sent under
    (a hyp TU defines ~5,500 functions, ~600 distinct in all; pickling them all is a second per
    TU, their keys a tenth of one)."""
    cmd, roots, source_root, cache, also, share = args
    tf = cached_tu(cmd, roots, source_root, cache, {}, also, share)
    functions, per_function, numbered = [], {}, []
    for fn in tf.functions:
        key = fn.key
        if key in tf.shared:
            n = _SENT.get(key)
            if n is not None:
                functions.append(n)
                continue
            n = _SENT[key] = len(_SENT)
            numbered.append((len(functions), n))
        functions.append(fn)
        if key in tf.per_function:
            per_function[key] = tf.per_function[key]
    return (os.getpid(), functions, numbered, per_function, tf.file_scope, tf.diagnostics, tf.includes,
            tf.also)


def _expand(sent: list) -> list[TUFacts]:
    """The workers' TUs (:func:`_tu_job`) whole again: a number stands for the record its worker
    sent under that number with an earlier TU."""
    full: dict = {}
    for pid, functions, numbered, per_function, *_ in sent:
        for at, n in numbered:
            fn = functions[at]
            full[pid, n] = (fn, per_function.get(fn.key))
    out = []
    for pid, functions, _numbered, per_function, file_scope, diagnostics, includes, _also in sent:
        tf = TUFacts()
        tf.file_scope, tf.diagnostics, tf.includes = file_scope, diagnostics, includes
        for fn in functions:
            if isinstance(fn, int):
                fn, per = full[pid, fn]
            else:
                per = per_function.get(fn.key)
            tf.functions.append(fn)
            if per is not None:
                tf.per_function[fn.key] = per
        out.append(tf)
    return out


def _weight(cmd) -> int:
    try:
        return os.path.getsize(cmd.file)
    except OSError:
        return 0


def _cached_only(cmd, roots, source_root, memo) -> bool:
    """True when the cache holds this TU (so reading it here is cheaper than a worker)."""
    d, _index_p, key = _last_key(cmd, roots, source_root, memo)
    return key is not None and (d / f"{key}.facts.msgpack").is_file()


def enum_constants(cmd: CompileCommand) -> dict[str, int]:
    """Every enum constant visible in a translation unit (``{"TPIDR_EL1": 17, ...}``).

    For turning ``sys_regs[SP_EL1]``-style indexes (asm-offsets comments, markers) into numbers.
    """
    import clang.cindex as ci

    try:
        tu = ci.Index.create().parse(cmd.file, args=clang_args(cmd), options=0)
    except ci.TranslationUnitLoadError:
        return {}
    out: dict[str, int] = {}
    for c in tu.cursor.get_children():
        if c.kind == ci.CursorKind.ENUM_DECL:
            for e in c.get_children():
                if e.kind == ci.CursorKind.ENUM_CONSTANT_DECL:
                    out.setdefault(e.spelling, e.enum_value)
    return out
