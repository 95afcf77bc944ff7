"""Kernels to analyse: fetched from distributions and cached locally.

``scopecheck.kernels.debian`` fetches Debian's arm64 kernels (the debug
``vmlinux``, the bootable ``Image`` and its ``config``, the source tarball)
with ``apt-get download``::

    from scopecheck.kernels.debian import fetch, fetch_vmlinux, fetch_source
    k = fetch("debian:6.12")
    k.vmlinux, k.image, k.config
"""

from scopecheck.kernels.debian import (  # noqa: F401
    FetchedKernel,
    Resolved,
    fetch,
    fetch_source,
    fetch_vmlinux,
    resolve,
)
