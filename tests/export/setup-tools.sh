#!/bin/sh
# Installs, from Debian's packages, what the export tests compile with:
# gcc (C header, x86_64 selftest), gcc-aarch64-linux-gnu and
# libc6-dev-arm64-cross (static arm64 selftest, arm64 uapi headers), rustc
# (Rust module); dtc (device-tree-compiler), which the guest tests compile
# kvmspe's SPE device-tree node with; and, for the kselftest built in Debian's
# linux-source-6.12 tree (tests/export/build-kselftest.sh), make, rsync
# (make headers_install) and xz-utils (the tarball).
# Only what is missing is installed, so a
# second run does nothing and prints nothing. Needs root (apt-get).
# gcc-multilib is not installed: Debian's gcc-multilib conflicts with the
# cross compilers; the -m32 check uses gcc's own freestanding headers.
set -eu
missing=""
command -v gcc >/dev/null 2>&1 || missing="$missing gcc libc6-dev"
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || missing="$missing gcc-aarch64-linux-gnu libc6-dev-arm64-cross"
command -v rustc >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/rustc" ] || missing="$missing rustc"
command -v dtc >/dev/null 2>&1 || missing="$missing device-tree-compiler"
for tool in make rsync; do
    command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
done
command -v xz >/dev/null 2>&1 || missing="$missing xz-utils"
if [ -n "$missing" ]; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing
fi
