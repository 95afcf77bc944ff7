#!/usr/bin/env bash
# Install scopecheck's system dependencies on Debian/Ubuntu, idempotently.
# Works as root (CI) or as a user with sudo.
#   scripts/install-deps.sh            system packages only
#   scripts/install-deps.sh --python   also pip-install the package (editable, with test extras)
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install-deps: need root or sudo to install system packages" >&2; exit 2
  fi
fi

PKGS=(dwarves gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-system-arm clang lld llvm ccache debugedit cpio flex bison bc
      libelf-dev libssl-dev make xz-utils zstd file rsync patch python3-venv coccinelle)

# arm64 Debian packages (the dbg vmlinux, the unsigned Image) are fetched with apt-get download.
if command -v dpkg >/dev/null 2>&1 && ! dpkg --print-foreign-architectures | grep -qx arm64; then
  $SUDO dpkg --add-architecture arm64
  NEED_UPDATE=1
fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# apt lists for arm64 must exist for `apt-get download ...:arm64`
if ! ls /var/lib/apt/lists/ 2>/dev/null | grep -q 'binary-arm64_Packages'; then NEED_UPDATE=1; fi

if [ "${NEED_UPDATE:-0}" = 1 ] || [ ${#missing[@]} -gt 0 ]; then
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}" >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Microsoft's SARIF Multitool (npm @microsoft/sarif-multitool, a self-contained .NET build: no
# runtime to install) validates scopecheck's SARIF in the test suite.
if ! command -v npm >/dev/null 2>&1; then
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null
fi
if ! command -v sarif-multitool >/dev/null 2>&1; then
  echo "install-deps: installing @microsoft/sarif-multitool (npm)" >&2
  $SUDO npm install -g --no-fund --no-audit @microsoft/sarif-multitool >/dev/null
fi
# npm's install-script policy may skip the package's own `chmod u+x`: make sure the binary runs
mt="$(npm root -g)/@microsoft/sarif-multitool/node_modules/@microsoft/sarif-multitool-linux/Sarif.Multitool"
if [ -f "$mt" ] && [ ! -x "$mt" ]; then $SUDO chmod a+x "$mt"; fi

if [ "${1:-}" = "--python" ]; then
  here="$(cd "$(dirname "$0")/.." && pwd)"
  python3 -m pip install -q -e "$here[test]"
fi
echo "install-deps: ok" >&2
