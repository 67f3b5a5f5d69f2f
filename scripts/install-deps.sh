#!/usr/bin/env bash
# Installs what netslate needs on Debian 12: apt packages, uv, and the locked Python environment.
# Idempotent: only missing packages are installed.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  dnsmasq ipxe ovmf qemu-system-x86 qemu-utils
  libvirt-daemon-system libvirt-dev pkg-config gcc python3-dev
  busybox-static linux-image-amd64 kmod cpio zstd
  novnc
  squashfs-tools erofs-utils mmdebstrap bind9-dnsutils casync nginx-light xdelta3
  dnsperf bind9-utils
  pxelinux syslinux-common extlinux fdisk dosfstools systemd-boot-efi iproute2 curl ca-certificates util-linux e2fsprogs
  isc-dhcp-server kea-dhcp4-server
  shim-signed grub-efi-amd64-signed
  postgresql
  wrk
  slapd ldap-utils
  swtpm swtpm-tools tpm2-tools
  chromium chromium-driver fonts-dejavu-core
)
UV_VERSION=0.13.9

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing apt packages: ${missing[*]}"
  [ "$(id -u)" = 0 ] || { echo "error: installing apt packages needs root" >&2; exit 2; }
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v uv >/dev/null 2>&1 || [ "$(uv --version | awk '{print $2}')" != "$UV_VERSION" ]; then
  echo "installing uv $UV_VERSION"
  python3 -m pip install -q --root-user-action=ignore "uv==$UV_VERSION"
fi

# --compile-bytecode, and our own sources compiled too: every command starts from .pyc files. Without
# them Python compiles ~600 modules at each start when it may not write a cache (PYTHONDONTWRITEBYTECODE):
# `netslate image list` took 2.1 s of CPU, 0.8 s with them (issue 14).
uv sync --frozen -q --compile-bytecode
uv run --frozen python -m compileall -q src/netslate >/dev/null

# The web console's browser libraries (htmx), pinned by src/netslate/web/assets/package-lock.json and
# served by netslate itself (no CDN): `npm ci` when node_modules is missing or older than the lock.
ASSETS=src/netslate/web/assets
if ! command -v npm >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || { echo "error: installing npm needs root" >&2; exit 2; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
if [ ! -f "$ASSETS/node_modules/.package-lock.json" ] || [ "$ASSETS/package-lock.json" -nt "$ASSETS/node_modules/.package-lock.json" ]; then
  echo "installing web assets (npm ci)"
  (cd "$ASSETS" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null)
fi
