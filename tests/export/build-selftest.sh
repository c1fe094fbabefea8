#!/bin/sh
# Builds kvmspe's C conformance program, as a static binary unless asked for a dynamic one
# (kvmspe's shim, an LD_PRELOAD library, reaches only a dynamically linked program).
#   build-selftest.sh OUT [x86_64|arm64] [static|dynamic]   (default: this machine's architecture, static)
# The source comes from `python3 -m kvmspe export --lang c-selftest` (kvmspe must
# be importable: installed, or PYTHONPATH=src). Extra compiler flags come from
# CFLAGS, e.g. CFLAGS=-DKVM_ARM_VCPU_SPE=N to give the assumed SPE feature bit.
set -eu
if [ $# -lt 1 ] || [ $# -gt 3 ]; then
    echo "usage: $0 OUT [x86_64|arm64] [static|dynamic]" >&2
    exit 2
fi
out=$1
arch=${2:-$(uname -m)}
link=${3:-static}
case $link in
    static) ldflags=-static ;;
    dynamic) ldflags= ;;
    *) echo "$0: unknown link '$link'; accepted: static, dynamic" >&2; exit 2 ;;
esac
case $arch in
    x86_64|amd64) cc=gcc ;;
    arm64|aarch64) if [ "$(uname -m)" = aarch64 ]; then cc=gcc; else cc=aarch64-linux-gnu-gcc; fi ;;
    *) echo "$0: unknown architecture '$arch'; accepted: x86_64, arm64" >&2; exit 2 ;;
esac
if ! command -v "$cc" >/dev/null 2>&1; then
    echo "$0: $cc is missing (apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross)" >&2
    exit 2
fi
src=$(mktemp "${TMPDIR:-/tmp}/kvmspe-selftest.XXXXXX.c")
trap 'rm -f "$src"' EXIT
python3 -m kvmspe export --lang c-selftest > "$src"
# shellcheck disable=SC2086
"$cc" -std=c11 -O2 -Wall -Wextra -Werror $ldflags ${CFLAGS:-} "$src" -o "$out"
echo "built $out ($arch, $link, $cc)"
