"""The Debian kernel fetcher, against the real Debian mirror (fast here).

Uses the shared cache ($SCOPECHECK_CACHE or ~/.cache/scopecheck); the first
run downloads ~600 MB, later runs are cache hits.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
import kernel_cache  # noqa: E402

from scopecheck.cli_kernel import kernel_app  # noqa: E402
from scopecheck.kernels import debian  # noqa: E402
from scopecheck.kernels.debian import (  # noqa: E402
    AbiUnavailable,
    ChecksumMismatch,
    UnknownSpec,
    fetch,
    resolve,
)

pytestmark = [pytest.mark.kernel]


def _runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:  # click >= 8.2 keeps stderr apart already
        return CliRunner()


# --------------------------------------------------------------------------- offline


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("debian:6.1", ("series", "6.1")),
        ("6.12", ("series", "6.12")),
        ("debian:6.1.0-56", ("abi", "6.1.0-56")),
        ("debian:6.12.117+deb12", ("abi", "6.12.117+deb12")),
        ("debian:6.1.0-56-cloud-arm64", ("abi", "6.1.0-56")),
        ("6.1.0-56-cloud-arm64-dbg", ("abi", "6.1.0-56")),
    ],
)
def test_spec_normalisation(spec, expected):
    assert debian._normalize(spec, "cloud-arm64") == expected


@pytest.mark.parametrize("spec", ["bogus", "debian:", "ubuntu:6.1", "debian:6", "debian:6.1/../x"])
def test_bad_spec_rejected_before_apt(spec, monkeypatch):
    monkeypatch.setattr(debian, "_apt_cache", lambda *a: pytest.fail("apt-cache called"))
    with pytest.raises(UnknownSpec):
        resolve(spec)


def _fake_image(size: int = 4096) -> bytes:
    data = bytearray(size)
    data[0x38:0x3C] = b"ARM\x64"
    data[100:110] = b"0123456789"
    return bytes(data)


def test_gzip_vmlinuz_is_decompressed(tmp_path):
    raw = _fake_image()
    (tmp_path / "vmlinuz").write_bytes(gzip.compress(raw))
    got = debian._decompress_image(tmp_path, {"vmlinuz": {}, "config": {"size": 1, "sha256": "x"}})
    assert (tmp_path / "Image").read_bytes() == raw
    assert not (tmp_path / "vmlinuz").exists()
    assert set(got) == {"Image", "config"} and got["Image"]["size"] == len(raw)


def test_plain_vmlinuz_is_kept_and_non_image_rejected(tmp_path):
    raw = _fake_image()
    (tmp_path / "vmlinuz").write_bytes(raw)
    debian._decompress_image(tmp_path, {"vmlinuz": {}})
    assert (tmp_path / "Image").read_bytes() == raw
    (tmp_path / "Image").unlink()
    (tmp_path / "vmlinuz").write_bytes(b"\0" * 4096)
    with pytest.raises(debian.ScopecheckError, match="Image header"):
        debian._decompress_image(tmp_path, {"vmlinuz": {}})


# --------------------------------------------------------------------------- resolution (apt index)


def test_resolve_series_to_current_abi():
    r61 = resolve("debian:6.1")
    assert r61.series == "6.1" and r61.abi.startswith("6.1.0-") and r61.abi.endswith("-cloud-arm64")
    assert r61.dbg_package == f"linux-image-{r61.abi}-dbg"
    assert r61.image_package == f"linux-image-{r61.abi}-unsigned"
    assert r61.dbg.version == r61.version == r61.image.version
    assert len(r61.sha256) == 64 and r61.size > 100_000_000
    assert r61.source_package == "linux-source-6.1"

    r612 = resolve("6.12")
    assert r612.series == "6.12" and r612.abi.startswith("6.12.") and "+deb12-" in r612.abi
    # an exact ABI resolves to the same packages as the series that points at it
    exact = resolve("debian:" + r612.abi.removesuffix("-cloud-arm64"))
    assert (exact.dbg, exact.image) == (r612.dbg, r612.image)


def test_moved_on_abi_lists_available():
    with pytest.raises(AbiUnavailable) as e:
        resolve("debian:6.1.0-1")
    msg = str(e.value)
    assert "moved on" in msg and "available ABIs:" in msg
    assert resolve("debian:6.1").abi.removesuffix("-cloud-arm64") in msg


# --------------------------------------------------------------------------- real downloads


def _check_vmlinux(path: Path):
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        elf = ELFFile(f)
        assert elf["e_machine"] == "EM_AARCH64"
        assert elf.elfclass == 64 and elf.little_endian
        assert elf.get_section_by_name(".debug_info") is not None
        assert elf.get_section_by_name(".hyp.text") is not None or elf.get_section_by_name(".text")


@pytest.mark.slow
@pytest.mark.parametrize("series", kernel_cache.SERIES)
def test_fetch_vmlinux_image_config(series):
    k = kernel_cache.debian_kernel(series)
    assert k.series == series and k.abi.startswith(series + ".")
    _check_vmlinux(k.vmlinux)
    with open(k.image, "rb") as f:
        f.seek(0x38)
        assert f.read(4) == b"ARM\x64"
    config = k.config.read_text()
    assert "\nCONFIG_KVM=y\n" in config
    assert "\nCONFIG_ARM64=y\n" in config
    assert k.vmlinux.parent.parent == k.cache_dir
    stamp = json.loads((k.vmlinux.parent / ".complete").read_text())
    assert stamp["files"]["vmlinux"]["size"] == k.vmlinux.stat().st_size
    for d in {k.vmlinux.parent, k.image.parent}:  # (.tmp-* dirs may belong to concurrent fetches)
        assert sorted(p.name for p in d.iterdir()) in ([".complete", "vmlinux"], [".complete", "Image", "config"])
    assert kernel_cache.debian_vmlinux(series) == k.vmlinux


@pytest.mark.slow
def test_second_fetch_is_cache_hit_without_download(monkeypatch):
    first = kernel_cache.debian_kernel("6.1")  # warm the cache
    monkeypatch.setattr(debian, "_download", lambda *a, **k: pytest.fail("apt-get download called"))
    monkeypatch.setattr(debian, "_extract", lambda *a, **k: pytest.fail("extraction on a cache hit"))
    stages = []
    t = time.monotonic()
    k = fetch("debian:6.1", progress=lambda s, d, n: stages.append(s))
    elapsed = time.monotonic() - t
    assert k.cached and (k.vmlinux, k.image, k.config) == (first.vmlinux, first.image, first.config)
    assert elapsed < 5, f"cache hit took {elapsed:.1f} s"
    assert all(s.startswith("resolving") for s in stages)
    # verify=True re-hashes but still needs no download
    assert fetch("debian:6.1", verify=True).cached


@pytest.mark.slow
def test_damaged_cache_entry_is_refetched(tmp_path, monkeypatch):
    monkeypatch.setenv("SCOPECHECK_CACHE", str(tmp_path))
    r = resolve("debian:6.1")
    d, hit = debian._fetch_entry(r.image, {f"./boot/config-{r.abi}": "config"}, None, False)
    assert not hit and (d / "config").is_file()
    # same size, different bytes: only verify=True notices
    data = bytearray((d / "config").read_bytes())
    data[0] ^= 1
    (d / "config").write_bytes(bytes(data))
    assert debian._fetch_entry(r.image, {f"./boot/config-{r.abi}": "config"}, None, False)[1]
    d2, hit2 = debian._fetch_entry(r.image, {f"./boot/config-{r.abi}": "config"}, None, True)
    assert not hit2 and (d2 / "config").read_text().startswith("#")


@pytest.mark.slow
def test_checksum_mismatch_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("SCOPECHECK_CACHE", str(tmp_path))
    r = resolve("debian:6.1")
    bad = dataclasses.replace(r.image, sha256="0" * 64)
    with pytest.raises(ChecksumMismatch, match="checksum mismatch"):
        debian._fetch_entry(bad, {f"./boot/config-{r.abi}": "config"}, None, False)
    root = tmp_path / "kernels" / "debian"
    assert not (root / bad.cache_name).exists()
    assert not list(root.glob(".tmp-*")), "temp dir left behind"


# --------------------------------------------------------------------------- CLI


def test_cli_bogus_spec_exits_2_with_one_line():
    res = _runner().invoke(kernel_app, ["fetch", "bogus-kernel"])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scopecheck: unknown kernel spec")
    assert res.stdout == ""


def test_cli_bogus_abi_exits_2_with_one_line():
    res = _runner().invoke(kernel_app, ["fetch", "debian:6.1.0-2", "--no-image"])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "linux-image-6.1.0-2-cloud-arm64-dbg" in lines[0] and "available ABIs" in lines[0]
    assert "Traceback" not in res.stderr


@pytest.mark.slow
def test_cli_json_output():
    k = kernel_cache.debian_kernel("6.12")
    res = _runner().invoke(kernel_app, ["fetch", "debian:6.12", "--format", "json"])
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)  # stdout holds only the JSON document
    assert data["schema_version"] == 1
    assert data["abi"] == k.abi and data["version"] == k.version
    assert data["vmlinux"] == str(k.vmlinux) and data["image"] == str(k.image)
    assert data["config"] == str(k.config) and data["source_tarball"] is None
    assert data["cached"] is True


@pytest.mark.slow
def test_cli_text_output_no_image():
    v = kernel_cache.debian_vmlinux("6.1")
    res = _runner().invoke(kernel_app, ["fetch", "6.1", "--no-image"])
    assert res.exit_code == 0, res.stderr
    fields = dict(line.split(": ", 1) for line in res.stdout.strip().splitlines())
    assert fields["vmlinux"] == str(v)
    assert "image" not in fields


@pytest.mark.slow
def test_fetch_source_matches_kernel_version():
    from scopecheck.kernels.debian import fetch_source

    tarball = fetch_source("6.1")
    assert tarball.name == "linux-source-6.1.tar.xz"
    with open(tarball, "rb") as f:
        assert f.read(6) == b"\xfd7zXZ\x00"
    assert resolve("debian:6.1").version in tarball.parent.name
