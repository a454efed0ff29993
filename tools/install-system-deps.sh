#!/usr/bin/env bash
# Debian packages effarch's tests need beyond Python: the aarch64 cross toolchain and QEMU user-mode
# emulation and debootstrap (the emulated Arm device's root filesystem), and headless Chromium (the HTML diff report's browser test).
# Installs only what is missing; needs root (or sudo) and Debian's package registry.
set -euo pipefail
packages=(gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user-static debootstrap chromium chromium-driver)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing Debian packages: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
