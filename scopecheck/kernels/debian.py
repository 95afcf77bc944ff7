"""Fetch Debian's arm64 kernels with apt and cache them.

Specs::

    debian:6.1            current ABI of the 6.1 series (meta-package linux-image-<flavour>-dbg)
    debian:6.12           current ABI of the 6.12 series (linux-image-6.12-<flavour>-dbg)
    6.1, 6.12             the same, without the prefix
    debian:6.1.0-56       an exact ABI (also 6.12.117+deb12, or 6.1.0-56-cloud-arm64)

Per package, the cache holds only the extracted files::

    <cache_dir("kernels")>/debian/
        linux-image-6.1.0-56-cloud-arm64-dbg_6.1.192-2/       vmlinux, .complete
        linux-image-6.1.0-56-cloud-arm64-unsigned_6.1.192-2/  Image, config, .complete
        linux-source-6.1_6.1.192-2/                           linux-source-6.1.tar.xz, .complete
        .locks/<package>_<version>.lock                       fcntl.flock, one per package
        .apt/pkgcache.bin                                     apt's binary cache (speeds up apt-cache)

A package directory appears (by rename) only once complete; ``.complete``
(JSON: the .deb's SHA256 and size, each file's size and SHA256) is written
into it before the rename. A cached directory is reused when its stamp is
present and the files' sizes match; ``verify=True`` also re-hashes the files.
The .deb is checked against the SHA256 in apt's index before extraction and
deleted afterwards.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from scopecheck.errors import ScopecheckError, ToolMissing
from scopecheck.paths import atomic_write_text, cache_dir

__all__ = [
    "AptRecord",
    "Resolved",
    "FetchedKernel",
    "resolve",
    "fetch",
    "fetch_vmlinux",
    "fetch_source",
    "available_abis",
    "debian_cache_dir",
    "ArchitectureMissing",
    "RegistryUnreachable",
    "UnknownSpec",
    "AbiUnavailable",
    "ChecksumMismatch",
]

Progress = Callable[[str, Optional[int], Optional[int]], None]

ARCH = "arm64"
DEFAULT_FLAVOUR = "cloud-arm64"
DOWNLOAD_TIMEOUT = 1800  # seconds, per package
APT_QUERY_TIMEOUT = 120
STAMP = ".complete"
STAMP_FORMAT = 1
IMAGE_MAGIC = b"ARM\x64"
IMAGE_MAGIC_OFFSET = 0x38
_CHUNK = 1 << 20


# --------------------------------------------------------------------------- errors


class ArchitectureMissing(ScopecheckError):
    """dpkg does not know the arm64 architecture, or apt has no arm64 lists."""


class RegistryUnreachable(ScopecheckError):
    """apt-get download failed (mirror unreachable, file gone from the mirror)."""


class UnknownSpec(ScopecheckError):
    """The kernel spec is not understood or names no Debian kernel series."""


class AbiUnavailable(ScopecheckError):
    """An exact ABI was asked for that apt's index no longer (or never) had."""


class ChecksumMismatch(ScopecheckError):
    """A downloaded .deb or a cached file does not match its expected SHA256."""


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class AptRecord:
    """One package version as apt's index describes it."""

    package: str
    version: str
    architecture: str
    filename: str
    size: int
    sha256: str
    installed_size: int = 0  # bytes (apt gives KiB)

    @property
    def cache_name(self) -> str:
        """``<package>_<version>`` with an epoch colon made filename-safe."""
        return f"{self.package}_{self.version.replace(':', '%3a')}"

    @property
    def apt_name(self) -> str:
        """The argument for ``apt-get download``: ``pkg:arch=version``."""
        arch = f":{self.architecture}" if self.architecture != "all" else ""
        return f"{self.package}{arch}={self.version}"


@dataclass(frozen=True)
class Resolved:
    """A kernel spec resolved against apt's index."""

    spec: str
    series: str  # "6.1", "6.12"
    flavour: str  # "cloud-arm64"
    abi: str  # "6.1.0-56-cloud-arm64" (the `uname -r`)
    version: str  # Debian version, "6.1.192-2"
    dbg: AptRecord  # linux-image-<abi>-dbg: the vmlinux with DWARF
    image: Optional[AptRecord]  # linux-image-<abi>-unsigned: Image and config
    source: Optional[AptRecord]  # linux-source-<series>, same version if apt has it
    meta_package: Optional[str] = None  # the meta-package the ABI came from, if any

    @property
    def dbg_package(self) -> str:
        return self.dbg.package

    @property
    def image_package(self) -> Optional[str]:
        return self.image.package if self.image else None

    @property
    def source_package(self) -> Optional[str]:
        return self.source.package if self.source else None

    @property
    def sha256(self) -> str:
        """Expected SHA256 of the dbg .deb."""
        return self.dbg.sha256

    @property
    def size(self) -> int:
        """Size in bytes of the dbg .deb."""
        return self.dbg.size


@dataclass
class FetchedKernel:
    """Paths of a fetched kernel's files (all inside the cache)."""

    spec: str
    abi: str
    version: str
    vmlinux: Path
    image: Optional[Path]
    config: Optional[Path]
    source_tarball: Optional[Path]
    cache_dir: Path  # <cache>/kernels/debian
    series: str = ""
    cached: bool = False  # True when nothing had to be downloaded

    def to_json(self) -> dict:
        def s(p):
            return str(p) if p is not None else None

        return {
            "schema_version": 1,
            "spec": self.spec,
            "series": self.series,
            "abi": self.abi,
            "version": self.version,
            "vmlinux": s(self.vmlinux),
            "image": s(self.image),
            "config": s(self.config),
            "source_tarball": s(self.source_tarball),
            "cache_dir": s(self.cache_dir),
            "cached": self.cached,
        }


# --------------------------------------------------------------------------- apt plumbing


def debian_cache_dir() -> Path:
    d = cache_dir("kernels") / "debian"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _require(program: str, package: str) -> str:
    path = shutil.which(program)
    if not path:
        raise ToolMissing(program, package)
    return path


def _apt_options() -> list[str]:
    # Docker images often disable apt's binary cache, which makes every
    # apt-cache call rebuild it (~1 s). Keep our own copy in the cache.
    d = debian_cache_dir() / ".apt"
    try:
        d.mkdir(exist_ok=True)
    except OSError:
        return []
    return ["-o", f"Dir::Cache::pkgcache={d / 'pkgcache.bin'}", "-o", "Dir::Cache::srcpkgcache="]


def _env() -> dict:
    env = dict(os.environ)
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    env.pop("LANGUAGE", None)
    return env


def _apt_cache(*args: str) -> subprocess.CompletedProcess:
    exe = _require("apt-cache", "apt")
    try:
        return subprocess.run(
            [exe, *_apt_options(), *args],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=APT_QUERY_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise ScopecheckError(f"apt-cache {args[0]} timed out after {APT_QUERY_TIMEOUT} s") from None


def _parse_deb822(text: str) -> list[dict[str, str]]:
    records: list[dict[str, str]] = []
    cur: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if not line.strip():
            if cur:
                records.append(cur)
            cur, key = {}, None
        elif line[0] in " \t":
            if key:
                cur[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, val = line.partition(":")
            key = key.strip()
            cur[key] = val.strip()
    if cur:
        records.append(cur)
    return records


def _show_many(names: list[str]) -> dict[str, list[dict[str, str]]]:
    """``apt-cache show`` of several ``pkg[:arch]`` names at once: {package: records}.

    Names apt does not know are simply absent from the result.
    """
    proc = _apt_cache("show", *names)
    if proc.returncode != 0:
        errors = [
            ln.strip()
            for ln in proc.stderr.splitlines()
            if ln.startswith("E:") and "No packages found" not in ln and "Unable to locate" not in ln
        ]
        if errors:
            raise ScopecheckError(f"apt-cache show failed: {errors[-1]}")
    out: dict[str, list[dict[str, str]]] = {}
    for r in _parse_deb822(proc.stdout):
        if "Package" in r:
            out.setdefault(r["Package"], []).append(r)
    return out


def _show(package: str, arch: Optional[str] = ARCH) -> list[dict[str, str]]:
    """Records of ``apt-cache show``; [] when apt has no such package."""
    name = f"{package}:{arch}" if arch else package
    return _show_many([name]).get(package, [])


def _newest(records: list[dict[str, str]]) -> list[dict[str, str]]:
    """Records sorted newest version first (apt's candidate unless pinned otherwise)."""
    return sorted(records, key=lambda r: _DebVersion(r.get("Version", "0")), reverse=True)


class _DebVersion:
    """Debian version ordering (deb-version(7)): epoch, upstream, revision; '~' sorts first."""

    def __init__(self, v: str):
        epoch, _, rest = v.partition(":") if ":" in v else ("0", "", v)
        upstream, _, rev = rest.rpartition("-") if "-" in rest else (rest, "", "0")
        self.parts = (int(epoch) if epoch.isdigit() else 0, upstream, rev)

    @staticmethod
    def _order(c: str) -> int:
        if c == "~":
            return -1
        if c.isalpha():
            return ord(c)
        return ord(c) + 256

    @classmethod
    def _cmp_str(cls, a: str, b: str) -> int:
        i = j = 0
        while i < len(a) or j < len(b):
            # non-digit run
            while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
                ca = cls._order(a[i]) if i < len(a) and not a[i].isdigit() else 0
                cb = cls._order(b[j]) if j < len(b) and not b[j].isdigit() else 0
                if ca != cb:
                    return -1 if ca < cb else 1
                i += 1 if i < len(a) and not a[i].isdigit() else 0
                j += 1 if j < len(b) and not b[j].isdigit() else 0
            # digit run
            si = i
            while i < len(a) and a[i].isdigit():
                i += 1
            sj = j
            while j < len(b) and b[j].isdigit():
                j += 1
            na, nb = int(a[si:i] or 0), int(b[sj:j] or 0)
            if na != nb:
                return -1 if na < nb else 1
        return 0

    def _cmp(self, other: "_DebVersion") -> int:
        if self.parts[0] != other.parts[0]:
            return -1 if self.parts[0] < other.parts[0] else 1
        return self._cmp_str(self.parts[1], other.parts[1]) or self._cmp_str(self.parts[2], other.parts[2])

    def __lt__(self, other: "_DebVersion") -> bool:
        return self._cmp(other) < 0

    def __eq__(self, other) -> bool:
        return isinstance(other, _DebVersion) and self._cmp(other) == 0


def _record(fields: dict[str, str]) -> AptRecord:
    try:
        return AptRecord(
            package=fields["Package"],
            version=fields["Version"],
            architecture=fields.get("Architecture", ARCH),
            filename=fields.get("Filename", ""),
            size=int(fields["Size"]),
            sha256=fields["SHA256"].lower(),
            installed_size=int(fields.get("Installed-Size", "0") or 0) * 1024,
        )
    except (KeyError, ValueError) as e:
        raise ScopecheckError(f"apt's record for {fields.get('Package', '?')} lacks a usable {e} field") from None


def _pick(records: list[dict[str, str]], version: Optional[str]) -> Optional[AptRecord]:
    """The record with ``version``, or (version None) the newest."""
    for r in _newest(records):
        if version is None or r.get("Version") == version:
            return _record(r)
    return None


def _check_architecture() -> None:
    dpkg = _require("dpkg", "dpkg")
    native = subprocess.run([dpkg, "--print-architecture"], capture_output=True, text=True,
                            timeout=60).stdout.strip()
    if native != ARCH:
        foreign = subprocess.run(
            [dpkg, "--print-foreign-architectures"], capture_output=True, text=True, timeout=60
        ).stdout.split()
        if ARCH not in foreign:
            raise ArchitectureMissing(
                "the arm64 architecture is not enabled in dpkg, so apt cannot fetch arm64 kernels "
                "(run scripts/install-deps.sh)"
            )
    lists = Path("/var/lib/apt/lists")
    if lists.is_dir() and not any(lists.glob(f"*binary-{ARCH}_Packages*")):
        raise ArchitectureMissing(
            "apt has no arm64 package lists (run scripts/install-deps.sh, or apt-get update)"
        )


def available_abis(flavour: str = DEFAULT_FLAVOUR, series: Optional[str] = None) -> list[str]:
    """ABIs (without the flavour) whose dbg package is in apt's index, oldest first."""
    proc = _apt_cache("pkgnames", "linux-image-")
    rx = re.compile(r"^linux-image-(\d+\.\d+[\w.+~-]*?)-" + re.escape(flavour) + r"-dbg$")
    abis = set()
    for name in proc.stdout.split():
        m = rx.match(name)
        if not m:
            continue
        abi = m.group(1)
        if re.fullmatch(r"\d+\.\d+", abi):  # a versioned meta-package (linux-image-6.12-...-dbg)
            continue
        if series and _series_of(abi) != series:
            continue
        abis.add(abi)
    return sorted(abis, key=_version_key)


def _version_key(v: str):
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[.\-+~]", v)]


def _series_of(abi: str) -> str:
    m = re.match(r"(\d+\.\d+)", abi)
    return m.group(1) if m else abi


# --------------------------------------------------------------------------- resolve

_SERIES_RX = re.compile(r"\d+\.\d+")
_ABI_RX = re.compile(r"\d+\.\d+(?:\.\d+)?(?:-\d+|\+deb\d+)")


def _normalize(spec: str, flavour: str) -> tuple[str, str]:
    """-> ("series", "6.1") or ("abi", "6.1.0-56")."""
    s = spec.strip()
    if s.lower().startswith("debian:"):
        s = s[len("debian:"):]
    for suffix in (f"-{flavour}-dbg", f"-{flavour}-unsigned", f"-{flavour}"):
        if s.endswith(suffix):
            s = s[: -len(suffix)]
            break
    if _SERIES_RX.fullmatch(s):
        return "series", s
    if _ABI_RX.fullmatch(s):
        return "abi", s
    raise UnknownSpec(
        f"unknown kernel spec {spec!r} (expected debian:6.1, debian:6.12 "
        f"or an exact ABI such as debian:6.1.0-56 or debian:6.12.117+deb12)"
    )


def resolve(spec: str, flavour: str = DEFAULT_FLAVOUR) -> Resolved:
    """Resolve a kernel spec to exact package versions using apt's index (no download)."""
    _require("apt-cache", "apt")
    kind, value = _normalize(spec, flavour)
    _check_architecture()

    meta = None
    if kind == "series":
        series = value
        abi = version = None
        # linux-image-6.12-cloud-arm64-dbg, else the unversioned linux-image-cloud-arm64-dbg
        candidates = [f"linux-image-{series}-{flavour}-dbg", f"linux-image-{flavour}-dbg"]
        found = _show_many([f"{c}:{ARCH}" for c in candidates])
        for candidate in candidates:
            recs = _newest(found.get(candidate, []))
            if not recs:
                continue
            dep = re.search(
                r"linux-image-(\S+)-dbg\s*\(\s*=\s*([^)\s]+)\s*\)", recs[0].get("Depends", "")
            )
            if not dep:
                continue
            full_abi, dep_version = dep.group(1), dep.group(2)
            if _series_of(full_abi) != series:
                continue
            meta, abi, version = candidate, full_abi, dep_version
            break
        if abi is None:
            known = sorted({_series_of(a) for a in available_abis(flavour)}, key=_version_key)
            raise UnknownSpec(
                f"no Debian kernel series {series} for flavour {flavour} in apt's index"
                + (f" (available: {', '.join('debian:' + k for k in known)})" if known else "")
            )
        dbg = _pick(_show(f"linux-image-{abi}-dbg"), version)
        if dbg is None:
            raise AbiUnavailable(
                f"{meta} depends on linux-image-{abi}-dbg (= {version}), which is not in apt's index "
                f"(run apt-get update)"
            )
    else:
        series = _series_of(value)
        abi = f"{value}-{flavour}"
        dbg = _pick(_show(f"linux-image-{abi}-dbg"), None)
        if dbg is None:
            avail = available_abis(flavour, series) or available_abis(flavour)
            same = [a for a in avail if _series_of(a) == series]
            if same and _version_key(value) < _version_key(same[0]):
                why = f"Debian has moved on to {same[-1]}"
            elif same and _version_key(value) > _version_key(same[-1]):
                why = f"the newest one apt knows is {same[-1]}; run apt-get update if it was just released"
            else:
                why = "Debian has moved on or it never existed"
            raise AbiUnavailable(
                f"linux-image-{abi}-dbg is not in apt's index ({why}); "
                + (f"available ABIs: {', '.join(avail)}; " if avail else "")
                + f"use debian:{series} for the current one"
            )
        version = dbg.version

    extra = _show_many([f"linux-image-{abi}-unsigned:{ARCH}", f"linux-source-{series}"])
    image = _pick(extra.get(f"linux-image-{abi}-unsigned", []), version)
    src_records = extra.get(f"linux-source-{series}", [])
    source = _pick(src_records, version) or _pick(src_records, None)
    return Resolved(
        spec=spec,
        series=series,
        flavour=flavour,
        abi=abi,
        version=version,
        dbg=dbg,
        image=image,
        source=source,
        meta_package=meta,
    )


# --------------------------------------------------------------------------- cache entries


def _entry_dir(rec: AptRecord) -> Path:
    return debian_cache_dir() / rec.cache_name


@contextmanager
def _locked(rec: AptRecord, progress: Optional[Progress]) -> Iterator[None]:
    locks = debian_cache_dir() / ".locks"
    locks.mkdir(exist_ok=True)
    with open(locks / f"{rec.cache_name}.lock", "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _report(progress, f"waiting for another fetch of {rec.package}", None, None)
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _report(progress: Optional[Progress], stage: str, done: Optional[int], total: Optional[int]) -> None:
    if progress is not None:
        progress(stage, done, total)


def _read_stamp(d: Path) -> Optional[dict]:
    try:
        stamp = json.loads((d / STAMP).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(stamp, dict) or stamp.get("format") != STAMP_FORMAT:
        return None
    return stamp


def _sha256_file(path: Path, progress: Optional[Progress] = None, stage: str = "") -> str:
    h = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            done += len(chunk)
            if progress is not None and stage:
                progress(stage, done, total)
    return h.hexdigest()


def _cache_ok(d: Path, rec: AptRecord, files: list[str], verify: bool, progress: Optional[Progress]) -> bool:
    stamp = _read_stamp(d)
    if stamp is None or stamp.get("deb_sha256") != rec.sha256:
        return False
    entries = stamp.get("files", {})
    for name in files:
        meta = entries.get(name)
        p = d / name
        try:
            if meta is None or p.stat().st_size != meta["size"]:
                return False
        except OSError:
            return False
        if verify and _sha256_file(p, progress, f"verifying cached {name}") != meta["sha256"]:
            return False
    return True


class _CountingReader:
    def __init__(self, raw, cb: Callable[[int], None]):
        self.raw, self.cb, self.n = raw, cb, 0

    def read(self, n: int = -1) -> bytes:
        b = self.raw.read(n)
        self.n += len(b)
        self.cb(self.n)
        return b


def _download(rec: AptRecord, workdir: Path, progress: Optional[Progress]) -> Path:
    """apt-get download into workdir; returns the .deb."""
    exe = _require("apt-get", "apt")
    stage = f"downloading {rec.package}"
    _report(progress, stage, 0, rec.size)
    cmd = [exe, "-q", *_apt_options(), "download", rec.apt_name]
    errfile = workdir / ".apt-get.err"
    with open(errfile, "w+") as err:
        proc = subprocess.Popen(
            cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL, env=_env()
        )
        deadline = time.monotonic() + DOWNLOAD_TIMEOUT
        while True:
            try:
                rc = proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise RegistryUnreachable(
                    f"apt-get download {rec.package} did not finish within {DOWNLOAD_TIMEOUT} s "
                    f"(is the Debian mirror reachable?)"
                )
            if progress is not None:
                got = sum(p.stat().st_size for p in workdir.glob("*.deb*") if p.is_file())
                progress(stage, min(got, rec.size), rec.size)
        err.seek(0)
        messages = err.read()
    debs = [p for p in workdir.glob("*.deb") if p.is_file()]
    if rc != 0 or len(debs) != 1:
        lines = [
            ln.strip()
            for ln in messages.splitlines()
            if ln.startswith("E:") or ln.startswith("Err") or "Could not" in ln or "Failed" in ln
        ]
        detail = lines[-1] if lines else (messages.strip().splitlines() or ["no output"])[-1]
        raise RegistryUnreachable(
            f"apt-get download {rec.apt_name} failed: the Debian mirror is unreachable or no longer "
            f"has the file (try apt-get update): {detail}"
        )
    _report(progress, stage, rec.size, rec.size)
    return debs[0]


def _verify_deb(deb: Path, rec: AptRecord, progress: Optional[Progress]) -> None:
    size = deb.stat().st_size
    digest = _sha256_file(deb, progress, f"verifying {rec.package}")
    if size != rec.size or digest != rec.sha256:
        raise ChecksumMismatch(
            f"checksum mismatch for {deb.name}: got sha256 {digest} ({size} bytes), apt's index says "
            f"{rec.sha256} ({rec.size} bytes)"
        )


def _extract(
    deb: Path,
    rec: AptRecord,
    wanted: dict[str, str],
    dest: Path,
    progress: Optional[Progress],
) -> dict[str, dict]:
    """Extract members ``wanted`` ({member path in the .deb: file name in dest}).

    Streams ``dpkg-deb --fsys-tarfile`` through tarfile; stops reading once all
    members are found. Returns {file name: {"size", "sha256"}}.
    """
    exe = _require("dpkg-deb", "dpkg")
    stage = f"extracting {rec.package}"
    total = rec.installed_size or None
    _report(progress, stage, 0, total)
    got: dict[str, dict] = {}
    proc = subprocess.Popen(
        [exe, "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    last = [0.0]

    def tick(n: int) -> None:
        now = time.monotonic()
        if progress is not None and now - last[0] > 0.1:
            last[0] = now
            progress(stage, min(n, total) if total else n, total)

    try:
        reader = _CountingReader(proc.stdout, tick)
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            for member in tar:
                name = member.name
                if not name.startswith("./"):
                    name = "./" + name.lstrip("/")
                if name not in wanted:
                    continue
                if not member.isfile():
                    raise ScopecheckError(f"{deb.name}: {name} is not a regular file")
                src = tar.extractfile(member)
                out = dest / wanted[name]
                h = hashlib.sha256()
                with open(out, "wb") as f:
                    while chunk := src.read(_CHUNK):
                        h.update(chunk)
                        f.write(chunk)
                got[wanted[name]] = {"size": out.stat().st_size, "sha256": h.hexdigest()}
                if len(got) == len(wanted):
                    break
    except tarfile.TarError as e:
        raise ScopecheckError(f"cannot read {deb.name}: {e}") from None
    finally:
        proc.stdout.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        errtext = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
    missing = [m for m, n in wanted.items() if n not in got]
    if missing:
        detail = errtext.strip().splitlines()[-1] if errtext.strip() else ""
        raise ScopecheckError(
            f"{deb.name} does not contain {', '.join(missing)}" + (f" ({detail})" if detail else "")
        )
    if total:
        _report(progress, stage, total, total)
    return got


def _fetch_entry(
    rec: AptRecord,
    wanted: dict[str, str],
    progress: Optional[Progress],
    verify: bool,
    post: Optional[Callable[[Path, dict[str, dict]], dict[str, dict]]] = None,
    final_files: Optional[list[str]] = None,
) -> tuple[Path, bool]:
    """Ensure the cache entry for ``rec`` exists; returns (dir, was_cached)."""
    d = _entry_dir(rec)
    files = final_files or list(wanted.values())
    root = debian_cache_dir()
    if _cache_ok(d, rec, files, verify, progress):
        return d, True
    with _locked(rec, progress):
        # Another process may have finished it while we waited.
        if _cache_ok(d, rec, files, verify, progress):
            return d, True
        # Leftovers of killed fetches of this package (we hold its lock).
        for stale in root.glob(f".tmp-{rec.cache_name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        need = rec.size * 2 + rec.size // 2 + (64 << 20)
        free = shutil.disk_usage(root).free
        if free < need:
            raise ScopecheckError(
                f"not enough disk space in {root} for {rec.package}: need about {need >> 20} MiB, "
                f"{free >> 20} MiB free"
            )
        work = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-{rec.cache_name}-"))
        try:
            dl = work / "download"
            out = work / "entry"
            dl.mkdir()
            out.mkdir()
            deb = _download(rec, dl, progress)
            _verify_deb(deb, rec, progress)
            got = _extract(deb, rec, wanted, out, progress)
            deb.unlink()
            if post is not None:
                got = post(out, got)
            stamp = {
                "format": STAMP_FORMAT,
                "package": rec.package,
                "version": rec.version,
                "architecture": rec.architecture,
                "deb_sha256": rec.sha256,
                "deb_size": rec.size,
                "files": got,
                "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            atomic_write_text(out / STAMP, json.dumps(stamp, indent=1, sort_keys=True) + "\n")
            os.chmod(out / STAMP, 0o644)
            if d.exists():  # incomplete or damaged: replace it
                trash = work / "old"
                os.rename(d, trash)
            os.rename(out, d)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return d, False


# --------------------------------------------------------------------------- Image


def _decompress_image(out: Path, got: dict[str, dict]) -> dict[str, dict]:
    """Turn the extracted vmlinuz into an uncompressed ``Image`` (plain, gzip or EFI zboot)."""
    src = out / "vmlinuz"
    dst = out / "Image"
    with open(src, "rb") as f:
        head = f.read(64)
    if head[:2] == b"\x1f\x8b":
        with gzip.open(src, "rb") as fin, open(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout, _CHUNK)
    elif head[:2] == b"MZ" and head[4:8] == b"zimg":
        # EFI zboot: payload offset/size at 8/12, compression name at 24
        off = int.from_bytes(head[8:12], "little")
        size = int.from_bytes(head[12:16], "little")
        comp = head[24:32].split(b"\0")[0].decode(errors="replace")
        with open(src, "rb") as f:
            f.seek(off)
            payload = f.read(size)
        if comp == "gzip":
            data = gzip.decompress(payload)
        elif comp in ("xz", "lzma"):
            data = lzma.decompress(payload)
        elif comp == "zstd":
            import zstandard

            data = zstandard.ZstdDecompressor().stream_reader(payload).read()
        else:
            raise ScopecheckError(f"vmlinuz is an EFI zboot image compressed with {comp}, which is not supported")
        dst.write_bytes(data)
    else:
        os.rename(src, dst)
    src.unlink(missing_ok=True)
    with open(dst, "rb") as f:
        f.seek(IMAGE_MAGIC_OFFSET)
        if f.read(4) != IMAGE_MAGIC:
            raise ScopecheckError("the kernel image has no arm64 Image header (ARM\\x64 at 0x38)")
    got = {k: v for k, v in got.items() if k != "vmlinuz"}
    got["Image"] = {"size": dst.stat().st_size, "sha256": _sha256_file(dst)}
    return got


# --------------------------------------------------------------------------- public API


def fetch(
    spec: str,
    flavour: str = DEFAULT_FLAVOUR,
    image: bool = True,
    source: bool = False,
    progress: Optional[Progress] = None,
    verify: bool = False,
) -> FetchedKernel:
    """Fetch (or find in the cache) a Debian arm64 kernel.

    Always the dbg ``vmlinux``; with ``image`` the uncompressed ``Image`` and
    its ``config``; with ``source`` the ``linux-source-<series>.tar.xz``.
    ``progress(stage, done, total)`` is called with stages such as
    ``"downloading <package>"``, ``"verifying <package>"``, ``"extracting <package>"``.
    ``verify`` re-hashes cached files (a damaged entry is fetched again).
    """
    _report(progress, "resolving " + spec, None, None)
    r = resolve(spec, flavour)
    cached = True

    d, hit = _fetch_entry(
        r.dbg, {f"./usr/lib/debug/boot/vmlinux-{r.abi}": "vmlinux"}, progress, verify
    )
    cached &= hit
    vmlinux = d / "vmlinux"

    image_path = config_path = None
    if image:
        if r.image is None:
            raise AbiUnavailable(
                f"linux-image-{r.abi}-unsigned ({r.version}) is not in apt's index, so there is no Image "
                f"for {r.abi} (use --no-image / image=False)"
            )
        d, hit = _fetch_entry(
            r.image,
            {f"./boot/vmlinuz-{r.abi}": "vmlinuz", f"./boot/config-{r.abi}": "config"},
            progress,
            verify,
            post=_decompress_image,
            final_files=["Image", "config"],
        )
        cached &= hit
        image_path, config_path = d / "Image", d / "config"

    tarball = None
    if source:
        tarball, hit = _fetch_source_record(r, progress, verify)
        cached &= hit

    return FetchedKernel(
        spec=spec,
        abi=r.abi,
        version=r.version,
        vmlinux=vmlinux,
        image=image_path,
        config=config_path,
        source_tarball=tarball,
        cache_dir=debian_cache_dir(),
        series=r.series,
        cached=cached,
    )


def _fetch_source_record(r: Resolved, progress: Optional[Progress], verify: bool) -> tuple[Path, bool]:
    if r.source is None:
        raise AbiUnavailable(f"linux-source-{r.series} is not in apt's index")
    name = f"linux-source-{r.series}.tar.xz"
    d, hit = _fetch_entry(r.source, {f"./usr/src/{name}": name}, progress, verify)
    return d / name, hit


def fetch_vmlinux(spec: str, flavour: str = DEFAULT_FLAVOUR, progress: Optional[Progress] = None) -> Path:
    """The dbg ``vmlinux`` (ELF with DWARF) for ``spec``."""
    return fetch(spec, flavour, image=False, source=False, progress=progress).vmlinux


def fetch_source(series: str, progress: Optional[Progress] = None, verify: bool = False) -> Path:
    """``linux-source-<series>.tar.xz`` for ``series`` ("6.1", "6.12", or any spec).

    The version matches the series' current dbg kernel when apt has it.
    """
    spec = series if ":" in series else f"debian:{series}"
    r = resolve(spec)
    return _fetch_source_record(r, progress, verify)[0]
