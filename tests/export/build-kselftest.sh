#!/bin/sh
# Builds `kvmspe export --lang kselftest` as a KVM selftest inside a kernel tree, for arm64.
#   build-kselftest.sh [--tree DIR] [--patch FILE] OUT
# Without --tree: Debian 12's linux-source-6.12 (bookworm-security), downloaded with
# `apt-get download` and extracted once into $KVMSPE_KSELFTEST_CACHE (default
# ~/.cache/kvmspe-kselftest); later runs reuse it. --tree DIR: a kernel tree of yours
# (with the SPE series, say). The test's file and its Makefile line are added to the tree
# (tools/testing/selftests/kvm/arm64/ and Makefile.kvm, or aarch64/ and Makefile up to
# 6.12), the tree's uapi headers installed (make headers_install, which needs rsync), the
# test built with the tree's own flags; a warning fails the build. The built test is
# copied to OUT; the Makefile line is printed. --patch FILE also writes a patch, for
# `git am`, that adds the file and that line.
# The numbers the SPE series does not publish come from the tree's uapi, else from
# EXTRA_CFLAGS (e.g. EXTRA_CFLAGS="-DKVM_ARM_VCPU_SPE=16 -DKVM_EXIT_RLIMIT=65536").
# kvmspe must be importable (installed, or PYTHONPATH=src). Exit 2 on bad usage, 1 when
# a step fails (its output shown).
set -eu
usage() { echo "usage: $0 [--tree DIR] [--patch FILE] OUT" >&2; exit 2; }
tree= patch= out=
while [ $# -gt 0 ]; do
    case $1 in
        --tree) [ $# -ge 2 ] || usage; tree=$2; shift 2 ;;
        --patch) [ $# -ge 2 ] || usage; patch=$2; shift 2 ;;
        -h|--help) sed -n '2,17s/^# \{0,1\}//p' "$0"; exit 0 ;;
        -*) echo "$0: unknown option '$1'; accepted: --tree DIR, --patch FILE" >&2; exit 2 ;;
        *) [ -z "$out" ] || usage; out=$1; shift ;;
    esac
done
[ -n "$out" ] || usage
name=spe_conformance
fail() { echo "$0: $*" >&2; exit 1; }
for tool in make python3 rsync; do
    command -v "$tool" >/dev/null 2>&1 || fail "$tool is missing (tests/export/setup-tools.sh installs it)"
done
if [ "$(uname -m)" = aarch64 ]; then cross=; else cross=aarch64-linux-gnu-; fi
command -v "${cross}gcc" >/dev/null 2>&1 || fail "${cross}gcc is missing (apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross)"

if [ -z "$tree" ]; then
    cache=${KVMSPE_KSELFTEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kvmspe-kselftest}
    tree=$cache/src/linux-source-6.12
    if [ ! -f "$tree/Makefile" ]; then
        mkdir -p "$cache"
        work=$(mktemp -d "$cache/.extract.XXXXXX")
        trap 'rm -rf "$work"' EXIT
        echo "fetching Debian's linux-source-6.12 (bookworm-security) into $cache" >&2
        (cd "$work" && timeout 600 apt-get download linux-source-6.12) >&2 \
            || fail "apt-get download linux-source-6.12 failed: does apt know bookworm-security (apt-get update)?"
        timeout 300 dpkg-deb -x "$work"/linux-source-6.12_*.deb "$work/deb" || fail "dpkg-deb -x failed"
        mkdir -p "$work/src"
        timeout 600 tar -xJf "$work"/deb/usr/src/linux-source-6.12.tar.xz -C "$work/src" || fail "tar failed"
        mkdir -p "$cache/src"
        rm -rf "$tree"
        mv "$work/src/linux-source-6.12" "$tree"
    fi
fi
[ -f "$tree/Makefile" ] && [ -d "$tree/tools/testing/selftests/kvm" ] \
    || fail "$tree is not a kernel tree (no Makefile, no tools/testing/selftests/kvm)"
tree=$(cd "$tree" && pwd)
kvm=$tree/tools/testing/selftests/kvm
if [ -f "$kvm/Makefile.kvm" ] && [ -d "$kvm/arm64" ]; then
    sub=arm64 mk=Makefile.kvm var=TEST_GEN_PROGS_arm64
elif [ -d "$kvm/aarch64" ]; then
    sub=aarch64 mk=Makefile var=TEST_GEN_PROGS_aarch64
else
    fail "$kvm has neither arm64/ (Makefile.kvm) nor aarch64/ (Makefile)"
fi
line="$var += $sub/$name"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/kvmspe-kselftest.XXXXXX")
trap 'rm -rf "$tmp" ${work:+"$work"}' EXIT
timeout 120 python3 -m kvmspe export --lang kselftest > "$tmp/$name.c"
cp "$tmp/$name.c" "$kvm/$sub/$name.c"
grep -vxF "$line" "$kvm/$mk" > "$tmp/Makefile.orig"
if ! grep -qxF "$line" "$kvm/$mk"; then
    # After the last arm64 test of the list.
    last=$(grep -n "^$var += $sub/" "$kvm/$mk" | tail -n 1 | cut -d: -f1)
    [ -n "$last" ] || fail "$kvm/$mk lists no $var test to add $name after"
    sed -i "${last}a $line" "$kvm/$mk"
fi

start=$(date +%s)
timeout 600 make -s -C "$tree" ARCH=arm64 CROSS_COMPILE="$cross" headers_install > "$tmp/headers.log" 2>&1 \
    || { cat "$tmp/headers.log" >&2; fail "make headers_install failed"; }
timeout 900 make -C "$kvm" ARCH=arm64 CROSS_COMPILE="$cross" EXTRA_CFLAGS="${EXTRA_CFLAGS:-}" \
    "$kvm/$sub/$name" > "$tmp/build.log" 2>&1 \
    || { cat "$tmp/build.log" >&2; fail "the build failed"; }
if grep -n -B3 "warning:" "$tmp/build.log" >&2; then
    fail "the build gave the warnings above"
fi
seconds=$(( $(date +%s) - start ))
mkdir -p "$(dirname "$out")"
cp "$kvm/$sub/$name" "$out"
echo "built $out ($sub/$name in $tree, ${cross:-native }gcc, EXTRA_CFLAGS='${EXTRA_CFLAGS:-}', ${seconds} s)"
echo "Makefile line ($mk): $line"

if [ -n "$patch" ]; then
    author=$(git -C "$tree" config user.name 2>/dev/null || true)
    email=$(git -C "$tree" config user.email 2>/dev/null || true)
    rel=tools/testing/selftests/kvm
    {
        echo "From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001"
        echo "From: ${author:-kvmspe} <${email:-kvmspe@localhost}>"
        echo "Date: $(LC_ALL=C date -R)"
        echo "Subject: [PATCH] KVM: arm64: selftests: Add the SPE VCPU interface conformance test"
        echo
        echo "$sub/$name runs kvmspe's conformance cases for KVM_ARM_VCPU_SPE_CTRL, one"
        echo "kselftest test per case; generated by kvmspe export --lang kselftest."
        echo "---"
        echo
        diff -u --label "a/$rel/$mk" --label "b/$rel/$mk" "$tmp/Makefile.orig" "$kvm/$mk" \
            | sed "1s|^|diff --git a/$rel/$mk b/$rel/$mk\n|" || true
        echo "diff --git a/$rel/$sub/$name.c b/$rel/$sub/$name.c"
        echo "new file mode 100644"
        diff -u --label /dev/null --label "b/$rel/$sub/$name.c" /dev/null "$tmp/$name.c" || true
        echo "-- "
        echo "kvmspe"
    } > "$patch"
    echo "patch $patch (git am $patch)"
fi
