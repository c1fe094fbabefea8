"""The C header and the Rust module: they compile, they carry the library's
numbers, and their MaxBuffSize codec agrees with kvmspe's on every field
value (all 2^16 field values for decode; for encode, representability and
rounding, every representable size and its neighbours)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kvmspe import abi
from kvmspe.arch import maxbuf
from kvmspe.errors import NotRepresentableError
from kvmspe.export import abidata, c_header, render, rust_module, template, vectors

HERE = Path(__file__).resolve().parent / "export"
ROOT = Path(__file__).resolve().parent.parent
CFLAGS = ["-std=c11", "-Wall", "-Wextra", "-Werror"]
TIMEOUT = 120


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, check=False, **kw)  # type: ignore[call-overload, no-any-return]


def _need_gcc() -> str:
    gcc = shutil.which("gcc")
    if gcc is None:
        if os.environ.get("CI") == "true":
            pytest.fail("gcc is missing: install Debian's gcc package")
        pytest.skip("gcc is not installed")
    return gcc


def find_rustc() -> str | None:
    """rustc on PATH, else rustup's ~/.cargo/bin/rustc."""
    found = shutil.which("rustc")
    if found:
        return found
    cargo = Path.home() / ".cargo" / "bin" / "rustc"
    return str(cargo) if cargo.is_file() and os.access(cargo, os.X_OK) else None


def _need_rustc() -> str:
    rustc = find_rustc()
    if rustc is None:
        reason = "rustc is missing (not on PATH nor in ~/.cargo/bin): apt-get install rustc"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return rustc


# --- the table both drivers check --------------------------------------------------------------


def _hex(v: int | None) -> str:
    return "-" if v is None else f"{v:x}"


def _size_line(size: int) -> str:
    try:
        field: int | None = maxbuf.encode(size)
    except NotRepresentableError:
        field = None
    cols = [_hex(size), "1" if maxbuf.is_representable(size) else "0", _hex(field)]
    for page in maxbuf.PAGE_SIZES:
        cols.append(_hex(maxbuf.round_down(size, page)))
        try:
            cols.append(_hex(maxbuf.round_up(size, page)))
        except NotRepresentableError:
            cols.append("-")
    return "S " + " ".join(cols)


def _vector_line(v: dict[str, Any]) -> str:
    """An S line from a committed codec vector, as the vector states it."""
    size = int(v["size"], 16)
    if v["representable"]:
        cols = [_hex(size), "1", _hex(v["field"])]
        for page in maxbuf.PAGE_SIZES:  # a representable size is its own rounding where aligned
            down = maxbuf.round_down(size, page)
            cols += [_hex(down), _hex(maxbuf.round_up(size, page))]
        return "S " + " ".join(cols)
    cols = [_hex(size), "0", "-"]
    for r in v["page_aligned"]:
        cols += [f"{int(r['down'], 16):x}", f"{int(r['up'], 16):x}" if "up" in r else "-"]
    return "S " + " ".join(cols)


def codec_table() -> str:
    """The committed vectors (vectors/maxbuffsize-codec.json: every valid field's
    size, the reserved fields, the pinned sizes), then every other 16-bit field
    value and every representable size with its neighbours as kvmspe answers."""
    committed = json.loads((ROOT / "vectors" / vectors.CODEC_FILE).read_text())
    lines = [f"D {f:x} 1 {int(size, 16):x}" for f, size in enumerate(committed["decode_table"])]
    reserved = {r["field"] for r in committed["reserved_fields"]}
    lines += [f"D {f:x} 0 0" for f in sorted(reserved)]
    lines += [f"D {f:x} 0 0" for f in range(maxbuf.FIELD_MAX + 1, 1 << 16) if f not in reserved]
    lines += [_vector_line(v) for v in committed["vectors"]]
    sizes: set[int] = set()
    for field in range(maxbuf.FIELD_MAX + 1):
        s = maxbuf.decode(field)
        # Either side, a page minus one above, and half way to the next size.
        after = maxbuf.decode(field + 1) if field < maxbuf.FIELD_MAX else maxbuf.LARGEST + (1 << 42)
        sizes.update(n for n in (s - 1, s, s + 1, s + 4095, (s + after) // 2) if 0 <= n < 1 << 64)
    sizes.update({maxbuf.LARGEST + 1, 1 << 63, (1 << 64) - 1})
    lines += [_size_line(s) for s in sorted(sizes)]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("codec") / "table.txt"
    path.write_text(codec_table())
    return path


# --- C ----------------------------------------------------------------------------------------------


def test_cli_header_passes_gcc_syntax_check() -> None:
    _need_gcc()
    cmd = f"{sys.executable} -m kvmspe export --lang c | gcc -x c -fsyntax-only -Wall -Wextra -Werror -"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(
        ["bash", "-o", "pipefail", "-c", cmd],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("std", ["c99", "c11"])
def test_header_compiles_pedantic(tmp_path: Path, std: str) -> None:
    gcc = _need_gcc()
    (tmp_path / "kvmspe.h").write_text(c_header.render())
    src = tmp_path / "use.c"
    src.write_text(
        '#include "kvmspe.h"\nint main(void) { uint16_t f; return !kvmspe_maxbuffsize_encode(4096, &f); }\n'
    )
    proc = _run(
        [
            gcc,
            f"-std={std}",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-Wpedantic",
            "-O2",
            str(src),
            "-o",
            str(tmp_path / "use"),
        ]
    )
    assert proc.returncode == 0, proc.stderr
    assert _run([str(tmp_path / "use")]).returncode == 0


def test_header_compiles_32bit(tmp_path: Path) -> None:
    """-m32: gcc's own stdint.h and stdbool.h (-ffreestanding), so no i386 libc
    is needed; the object must build without warnings."""
    gcc = _need_gcc()
    (tmp_path / "kvmspe.h").write_text(c_header.render())
    src = tmp_path / "use.c"
    src.write_text(
        '#include "kvmspe.h"\n'
        '_Static_assert(sizeof(void *) == 4, "32-bit");\n'
        "bool f(uint64_t s, uint64_t *o) { return kvmspe_maxbuffsize_round_up(s, 4096, o); }\n"
    )
    probe = _run([gcc, "-m32", "-ffreestanding", "-x", "c", "-c", "/dev/null", "-o", str(tmp_path / "p.o")])
    if probe.returncode != 0:
        pytest.skip(f"gcc cannot target -m32 here: {probe.stderr.strip()}")
    proc = _run(
        [
            gcc,
            "-m32",
            "-ffreestanding",
            *CFLAGS,
            "-Wpedantic",
            "-O2",
            "-c",
            str(src),
            "-o",
            str(tmp_path / "use.o"),
        ]
    )
    assert proc.returncode == 0, proc.stderr


def test_header_numbers_match_linux_kvm_h(tmp_path: Path) -> None:
    """Where the arm64 <linux/kvm.h> defines a name too, it has our number; and
    the header can follow it without a redefinition warning. Compiled with
    Debian's arm64 cross compiler, whose linux-libc-dev-arm64-cross has the
    arm64 uapi (on x86 the arm64 structs behind some ioctl numbers are missing)."""
    gcc = shutil.which("aarch64-linux-gnu-gcc")
    if gcc is None:
        reason = "aarch64-linux-gnu-gcc is missing: apt-get install gcc-aarch64-linux-gnu"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    checks = []
    for c in abidata.spe_constants() + abidata.uapi_constants():
        checks += [
            f"#ifdef {c.name}",
            f'_Static_assert((unsigned long long)({c.name}) == {c.value}ULL, "{c.name}");',
            "#endif",
        ]
    (tmp_path / "kvmspe.h").write_text(c_header.render())
    src = tmp_path / "both.c"
    src.write_text(
        "#define SZ_64K 0x10000 /* the uapi uses the kernel-internal SZ_64K */\n#include <linux/kvm.h>\n"
        + "\n".join(checks)
        + '\n#include "kvmspe.h"\nint main(void) { return 0; }\n'
    )
    proc = _run([gcc, *CFLAGS, "-fsyntax-only", str(src)])
    assert proc.returncode == 0, proc.stderr


def test_c_codec_agrees_on_every_field(tmp_path: Path, table: Path) -> None:
    gcc = _need_gcc()
    (tmp_path / "kvmspe.h").write_text(c_header.render())
    exe = tmp_path / "codec_check"
    proc = _run([gcc, *CFLAGS, "-O2", "-I", str(tmp_path), str(HERE / "codec_check.c"), "-o", str(exe)])
    assert proc.returncode == 0, proc.stderr
    out = _run([str(exe), str(table)])
    assert out.returncode == 0, out.stdout + out.stderr
    assert " 0 mismatches" in out.stdout
    assert int(out.stdout.split()[0]) == len(table.read_text().splitlines())


def _assumed_probe(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    gcc = _need_gcc()
    (tmp_path / "kvmspe.h").write_text(c_header.render())
    src = tmp_path / "assumed.c"
    src.write_text(
        '#include <stdio.h>\n#include "kvmspe.h"\nint main(void) {\n'
        '#if KVMSPE_HAVE_KVM_ARM_VCPU_SPE\n printf("%d\\n", KVM_ARM_VCPU_SPE);\n'
        '#else\n printf("none\\n");\n#endif\n return 0; }\n'
    )
    proc = _run([gcc, *CFLAGS, *flags, str(src), "-o", str(tmp_path / "assumed")])
    if proc.returncode == 0:
        return _run([str(tmp_path / "assumed")])
    return proc


def test_c_assumed_numbers_have_no_default_and_take_a_build_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(abi, "ASSUMED", abi.Assumed())  # none given, whatever the environment says
    header = c_header.render()
    for a in abidata.assumed_numbers():
        assert f"#define {a.name} " not in header, a.name
        assert f"KVMSPE_HAVE_{a.name}" in header and "ASSUMED" in header
    assert _assumed_probe(tmp_path).stdout == "none\n"
    assert _assumed_probe(tmp_path, "-DKVM_ARM_VCPU_SPE=11").stdout == "11\n"
    refused = _assumed_probe(tmp_path, "-DKVMSPE_REQUIRE_ASSUMED")
    assert refused.returncode != 0 and "KVM_ARM_VCPU_SPE is assumed and unknown" in refused.stderr


def test_a_number_the_user_gave_is_exported_marked(monkeypatch: pytest.MonkeyPatch) -> None:
    abi.set_assumed(cap_arm_spe=251)
    try:
        header = c_header.render()
        rust = rust_module.render()
    finally:
        abi.set_assumed(cap_arm_spe=None)
    assert "#define KVM_CAP_ARM_SPE 251 /* ASSUMED: given to kvmspe" in header
    assert (
        'pub const KVM_CAP_ARM_SPE: Option<u32> = parse_assumed(option_env!("KVM_CAP_ARM_SPE"), Some(251));'
        in rust
    )


def test_exports_follow_the_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """An attribute added to abi.ATTRS, or a register field, shows up in both
    exports with no change to the exporters."""
    info = abi.AttrInfo(abi.KVM_ARM_VCPU_SPE_CTRL, 9, ("KVM_ARM_VCPU_SPE_EXAMPLE",), abi.U64, {})
    monkeypatch.setitem(abi.ATTRS, (abi.KVM_ARM_VCPU_SPE_CTRL, 9), info)
    assert "#define KVM_ARM_VCPU_SPE_EXAMPLE 9" in c_header.render()
    assert "pub const KVM_ARM_VCPU_SPE_EXAMPLE: u32 = 9;" in rust_module.render()
    header = c_header.render()
    for reg, rows in abidata.register_constants().items():
        assert f"/* {reg} */" in header
        for r in rows:
            assert f"#define {r.name} " in header


def test_register_masks_are_the_tables() -> None:
    from kvmspe.arch.registers import PMBIDR_EL1

    rows = {r.name: r.value for r in abidata.register_constants()["PMBIDR_EL1"]}
    assert rows["PMBIDR_EL1_MaxBuffSize_SHIFT"] == 32
    assert rows["PMBIDR_EL1_MaxBuffSize_MASK"] == 0xFFFF << 32
    assert rows["PMBIDR_EL1_EA_SError"] == 2
    assert rows["PMBIDR_EL1_RES0"] == PMBIDR_EL1.res0_mask


# --- Rust ------------------------------------------------------------------------------------------


def _rust_build(tmp_path: Path, main: Path, env: dict[str, str] | None = None) -> Path:
    rustc = _need_rustc()
    (tmp_path / "kvmspe.rs").write_text(rust_module.render())
    shutil.copy(main, tmp_path / "main.rs")
    exe = tmp_path / "main"
    proc = _run(
        [rustc, "--edition", "2021", "-O", "-D", "warnings", str(tmp_path / "main.rs"), "-o", str(exe)],
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr
    return exe


def test_rust_module_compiles_as_a_library(tmp_path: Path) -> None:
    rustc = _need_rustc()
    (tmp_path / "kvmspe.rs").write_text(render("rust"))
    proc = _run(
        [
            rustc,
            "--edition",
            "2021",
            "--crate-type",
            "lib",
            "-D",
            "warnings",
            str(tmp_path / "kvmspe.rs"),
            "--out-dir",
            str(tmp_path),
        ]
    )
    assert proc.returncode == 0, proc.stderr


def test_rust_codec_agrees_on_every_field(tmp_path: Path, table: Path) -> None:
    exe = _rust_build(tmp_path, HERE / "codec_check.rs")
    out = _run([str(exe), str(table)])
    assert out.returncode == 0, out.stdout + out.stderr
    assert " 0 mismatches" in out.stdout


def test_rust_assumed_number_from_the_build_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(abi, "ASSUMED", abi.Assumed())
    for name in ("KVM_ARM_VCPU_SPE", "KVM_CAP_ARM_SPE", "KVM_EXIT_RLIMIT"):
        monkeypatch.delenv(name, raising=False)
    main = tmp_path / "assumed.rs"
    main.write_text(
        '#[path = "kvmspe.rs"]\nmod kvmspe;\n'
        'fn main() { println!("{:?} {:?}", kvmspe::KVM_ARM_VCPU_SPE, kvmspe::KVM_EXIT_RLIMIT); }\n'
    )
    plain = tmp_path / "plain"
    plain.mkdir()
    assert _run([str(_rust_build(plain, main))]).stdout == "None None\n"
    given = tmp_path / "given"
    given.mkdir()
    env = {"KVM_ARM_VCPU_SPE": "11"}
    assert _run([str(_rust_build(given, main, env))]).stdout == "Some(11) None\n"


# --- the command line ---------------------------------------------------------------------------------


@pytest.mark.parametrize("lang", ["c", "rust", "c-selftest"])
def test_cli_prints_the_export(lang: str, capsys: pytest.CaptureFixture[str]) -> None:
    from kvmspe.cli import main

    assert main(["export", "--lang", lang]) == 0
    assert capsys.readouterr().out == render(lang)
    assert main(["export", "--lang", lang, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"lang": lang, "text": render(lang)}


def test_cli_refuses_an_unknown_language(capsys: pytest.CaptureFixture[str]) -> None:
    from kvmspe.cli import main

    with pytest.raises(SystemExit) as info:
        main(["export", "--lang", "cobol"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "invalid choice: 'cobol'" in err
    with pytest.raises(ValueError, match="accepted: c, rust, c-selftest"):
        render("cobol")


# --- the templates ---------------------------------------------------------------------------------


def test_a_template_is_filled_with_exactly_its_placeholders() -> None:
    given = ("@GENERATED@", "@SPE_NUMBERS@", "@UAPI_NUMBERS@", "@ASSUMED_NUMBERS@", "@REGISTER_FIELDS@")
    lines: dict[str, str | list[str]] = {name: ["x"] for name in given}
    with pytest.raises(ValueError, match="nothing given for its line @CODEC_NUMBERS@"):
        template.fill("kvmspe.h", lines)
    with pytest.raises(ValueError, match="lacks the lines @NOT_THERE@"):
        template.fill("kvmspe.h", {**lines, "@CODEC_NUMBERS@": "", "@NOT_THERE@": "y"})
    filled = template.fill("kvmspe.h", {**lines, "@GENERATED@": "/* a\nb */", "@CODEC_NUMBERS@": []})
    assert filled.startswith("/* a\nb */\n/*\n") and filled.endswith("#endif /* KVMSPE_H */\n")
    assert not [line for line in filled.splitlines() if line.startswith("@") and line.endswith("@")]


@pytest.mark.parametrize(
    ("module", "code"),
    [(c_header, "bool kvmspe_maxbuffsize_decode("), (rust_module, "fn maxbuffsize_decode(")],
)
def test_the_codec_text_is_in_the_template_not_in_python(module: object, code: str) -> None:
    source = Path(str(getattr(module, "__file__", ""))).read_text()
    assert code not in source
    name = "kvmspe.h" if module is c_header else "kvmspe.rs"
    assert code in template.text(name)


def test_the_templates_are_package_data() -> None:
    """pyproject ships every file of templates/ (a wheel without one would fail at export)."""
    import tomllib

    shipped = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = [p.removeprefix("export/templates/") for p in shipped["kvmspe"] if p.startswith("export/")]
    folder = ROOT / "src" / "kvmspe" / "export" / "templates"
    for path in folder.iterdir():
        assert any(path.match(p) for p in patterns), path.name


def _imported(package: str) -> set[str]:
    """The kvmspe modules the modules of ``kvmspe.PACKAGE`` import (``from .. import x`` as ``x``)."""
    import ast

    out: set[str] = set()
    for path in (ROOT / "src" / "kvmspe" / package).glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 2:
                base = node.module or ""
                out |= {f"{base}.{a.name}".strip(".") for a in node.names} if not base else {base}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kvmspe."):
                out.add((node.module or "").removeprefix("kvmspe."))
    return out


def test_imports_run_down_the_layers() -> None:
    """The conformance suite uses nothing of the exporters, and the exporters reach
    the real backend only through its ABI numbers (kvmspe.abi)."""
    assert not {m for m in _imported("conformance") if m.split(".")[0] == "export"}
    assert not {m for m in _imported("export") if m.split(".")[0] == "kvm"}
    assert "conformance.cases" in _imported("export")  # the check sees the imports it must see
