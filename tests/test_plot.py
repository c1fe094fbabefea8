"""``plan --plot``: a real PNG, drawn in this process, with the chosen size where it belongs.

Drawing needs matplotlib (the ``test`` extra installs it). Where it is
missing these tests skip with the reason, except under CI (``CI=true``),
where a missing matplotlib means the test extra was not installed: a
failure, not a skip.
"""

from __future__ import annotations

import errno
import importlib
import os
import stat
import struct
from pathlib import Path
from typing import Any

import pytest

from kvmspe import cli
from kvmspe import plot as plotting
from kvmspe.cli import UsageError, output
from kvmspe.cli.plot import ACCEPTED

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def need_matplotlib() -> None:
    """Skip without matplotlib, with the reason; under CI=true, fail instead."""
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("matplotlib is not installed under CI=true: the test extra must install it")
        pytest.skip("matplotlib is not installed (pip install 'kvmspe[test]'): no plot can be drawn here")


def plot(tmp_path: Path, *args: str, name: str = "pinned.png") -> tuple[int, Path, str, str]:
    """Run ``kvmspe plan ARGS --plot tmp_path/name`` in this process."""
    import contextlib

    need_matplotlib()
    import io

    target = tmp_path / name
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["plan", "--profile", "default-4k", *args, "--plot", str(target)])
    return code, target, out.getvalue(), err.getvalue()


def write_whole(path: str, write: Any) -> None:
    """Write ``path`` whole as ``--plot`` does, its errors those of ``--plot``."""
    output.write_atomically(path, write, option="--plot", accepted=ACCEPTED)


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, which must come first."""
    assert data[:8] == PNG_SIGNATURE
    length, kind = struct.unpack(">I4s", data[8:16])
    assert (length, kind) == (13, b"IHDR")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def pixels(path: Path) -> Any:
    """The PNG as an (height, width, 3) array of 0..255 ints."""
    image = importlib.import_module("matplotlib.image")
    array = image.imread(str(path))
    return (array[:, :, :3] * 255).round().astype(int)


def colour_columns(path: Path, hex_colour: str, rows: int = 100) -> list[int]:
    """Columns of the PNG where ``hex_colour`` fills at least ``rows`` pixels (a vertical line)."""
    rgb = [int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)]
    img = pixels(path)
    match = (abs(img - rgb) <= 8).all(axis=2)
    counts = match.sum(axis=0)
    return [int(x) for x in (counts >= rows).nonzero()[0]]


def test_the_plot_is_a_png_of_the_stated_size_and_not_blank(tmp_path: Path) -> None:
    code, target, out, err = plot(tmp_path, "--vcpus", "64", "--max-buffer-size", "16M", "--page-size", "64K")
    assert code == 0, err
    assert out.splitlines()[-1] == f"plot written to {target}"
    data = target.read_bytes()
    assert png_size(data) == plotting.PIXELS
    img = pixels(target)
    assert img.shape[:2] == (plotting.PIXELS[1], plotting.PIXELS[0])
    colours = {tuple(c) for c in img.reshape(-1, 3)[::7].tolist()}
    assert len(colours) > 50, len(colours)  # curves, text, antialiasing: not a flat image
    background = (img == 255).all(axis=2)
    assert 1 - background.mean() > 0.05  # a sizable part of the image is drawn on
    for case in ("best", "typical", "worst"):  # each curve is in the picture
        assert colour_columns(target, plotting.COLOURS[case], rows=1), case


def test_the_chosen_size_is_marked_where_it_is_on_the_log_axis(tmp_path: Path) -> None:
    """The marker is a vertical line in a colour nothing else uses, at the chosen size on the
    log2 x axis: the plot spans 4 KiB to 64 MiB (the sweep for 4 KiB pages, up to
    max(4 x size, 64 MiB)) with half an octave of room each side, between the axes' spines."""
    import math

    lo, hi = math.log2(4096) - 0.5, math.log2(64 << 20) + 0.5
    for size, nbytes in (("1M", 1 << 20), ("4M", 4 << 20), ("16M", 16 << 20)):
        code, target, _, err = plot(tmp_path, "--vcpus", "4", "--max-buffer-size", size, name=f"{size}.png")
        assert code == 0, err
        columns = colour_columns(target, plotting.COLOURS["chosen"])
        assert columns and columns[-1] - columns[0] <= 4, (size, columns)  # one thin line
        spines = colour_columns(target, "#000000", rows=300)  # the axes' left and right edges
        left, right = spines[0], spines[-1]
        assert right - left > plotting.PIXELS[0] // 2
        expected = left + (math.log2(nbytes) - lo) / (hi - lo) * (right - left)
        assert abs(sum(columns) / len(columns) - expected) <= 3, (size, columns, expected)
    # With no limit chosen (size 0) there is no marker, so the colour is the marker's alone.
    code, target, _, err = plot(tmp_path, "--max-buffer-size", "max", name="none.png")
    assert code == 0, err
    assert colour_columns(target, plotting.COLOURS["chosen"], rows=1) == []


def test_an_existing_file_is_replaced_whole_with_a_plain_files_mode(tmp_path: Path) -> None:
    target = tmp_path / "pinned.png"
    target.write_bytes(b"old")
    code, _, _, err = plot(tmp_path, "--vcpus", "2")
    assert code == 0, err
    assert target.read_bytes()[:8] == PNG_SIGNATURE
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pinned.png"]  # no temporary left


def test_an_existing_file_keeps_its_permission_bits(tmp_path: Path) -> None:
    target = tmp_path / "private.png"
    target.write_bytes(b"old")
    target.chmod(0o600)
    write_whole(str(target), lambda f: f.write(PNG_SIGNATURE))
    assert target.read_bytes() == PNG_SIGNATURE
    assert target.stat().st_mode & 0o777 == 0o600


def test_a_symbolic_link_is_written_through_and_stays_a_link(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    real = tmp_path / "shared" / "pinned.png"
    real.write_bytes(b"old")
    link = tmp_path / "pinned.png"
    link.symlink_to(Path("shared") / "pinned.png")
    write_whole(str(link), lambda f: f.write(PNG_SIGNATURE))
    assert link.is_symlink() and real.read_bytes() == PNG_SIGNATURE
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == ["pinned.png"]


def test_a_link_into_a_missing_directory_is_refused_before_drawing(tmp_path: Path) -> None:
    link = tmp_path / "pinned.png"
    link.symlink_to(tmp_path / "missing" / "pinned.png")
    code, _, out, err = plot(tmp_path, "--vcpus", "2")
    assert code == 2 and out == ""
    assert err.splitlines() == [
        f"kvmspe: error: --plot {str(link)!r}: cannot write in {str(tmp_path / 'missing')!r}:"
        " No such file or directory"
    ]
    assert link.is_symlink() and [p.name for p in tmp_path.iterdir()] == ["pinned.png"]


def test_a_special_file_is_never_replaced(tmp_path: Path) -> None:
    """A FIFO, or a link to one (as a link to /dev/null would be), is refused, and stays."""
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    link = tmp_path / "link.png"
    link.symlink_to(fifo)
    for name in ("fifo.png", "link.png"):
        code, target, out, err = plot(tmp_path, "--vcpus", "2", name=name)
        assert code == 2 and out == ""
        refusal = f"--plot {str(target)!r} is not a regular file; accepted: a new or regular .png file"
        assert err.splitlines() == [f"kvmspe: error: {refusal}"]
        with pytest.raises(UsageError, match="is not a regular file"):
            write_whole(str(target), lambda f: f.write(PNG_SIGNATURE))
    assert stat.S_ISFIFO(fifo.stat().st_mode) and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo.png", "link.png"]


def test_a_failing_savefig_leaves_no_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    need_matplotlib()
    figure = importlib.import_module("matplotlib.figure")

    def half_then_fail(self: Any, f: Any, **kwargs: Any) -> None:
        f.write(PNG_SIGNATURE + b"half a picture")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(figure.Figure, "savefig", half_then_fail)
    code, target, out, err = plot(tmp_path, "--vcpus", "2")
    assert code == 2 and out == ""
    assert err.splitlines() == [
        f"kvmspe: error: --plot {str(target)!r}: cannot write it: No space left on device"
    ]
    assert list(tmp_path.iterdir()) == []
    # An old file stays as it was.
    target.write_bytes(b"old")
    code, _, _, _ = plot(tmp_path, "--vcpus", "2")
    assert code == 2 and target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["pinned.png"]


def test_any_failure_while_writing_removes_the_temporary(tmp_path: Path) -> None:
    def boom(f: Any) -> None:
        f.write(b"partial")
        raise RuntimeError("drawing failed")

    with pytest.raises(RuntimeError, match="drawing failed"):
        write_whole(str(tmp_path / "x.png"), boom)
    assert list(tmp_path.iterdir()) == []


def test_a_name_as_long_as_the_file_system_allows_is_written(tmp_path: Path) -> None:
    """A 255-byte name (NAME_MAX) is a valid target: the temporary file's name must fit too."""
    target = tmp_path / ("p" * 251 + ".png")
    write_whole(str(target), lambda f: f.write(PNG_SIGNATURE))
    assert target.read_bytes() == PNG_SIGNATURE
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_a_keyboard_interrupt_while_writing_removes_the_temporary(tmp_path: Path) -> None:
    def interrupted(f: Any) -> None:
        f.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_whole(str(tmp_path / "x.png"), interrupted)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "reason"),
    [("missing/pinned.png", "No such file or directory"), ("afile/pinned.png", "Not a directory")],
)
def test_a_directory_that_cannot_be_written_is_refused_before_drawing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, reason: str
) -> None:
    (tmp_path / "afile").write_bytes(b"")

    def must_not_draw(*args: Any) -> None:
        raise AssertionError("drawn before the directory was checked")

    monkeypatch.setattr(plotting, "draw", must_not_draw)
    code, target, out, err = plot(tmp_path, "--vcpus", "2", name=name)
    assert code == 2 and out == ""
    directory = str(target.parent)
    assert err.splitlines() == [
        f"kvmspe: error: --plot {str(target)!r}: cannot write in {directory!r}: {reason}"
    ]


def test_no_size_to_draw_is_one_line_exit_2_and_no_file(tmp_path: Path) -> None:
    """Unbounded (size 0) with so many VCPUs that not one 64 KiB page each fits a 30-bit VA."""
    code, target, out, err = plot(
        tmp_path, "--vcpus", "65536", "--max-buffer-size", "0", "--page-size", "64K", "--levels", "2"
    )
    assert code == 2 and out == ""
    assert err.splitlines() == [
        "kvmspe: error: --plot: not even one 64 KiB page per VCPU fits 65536 VCPUs in a 30-bit guest VA"
        " space, so there is no size to draw; accepted: fewer VCPUs, or more --levels"
    ]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("missing/dir/pinned.png", "cannot write in"),
        ("pinned.svg", "accepted: a file name ending in .png"),
        ("adir.png", "is a directory"),
        ("two\nlines.png", "control character"),
        ("tab\t.png", "control character"),
        ("nul\0.png", "control character"),
    ],
)
def test_an_unwritable_path_is_one_line_exit_2(tmp_path: Path, name: str, needle: str) -> None:
    (tmp_path / "adir.png").mkdir()
    code, _, out, err = plot(tmp_path, "--vcpus", "1", name=name)
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvmspe: error: --plot") and needle in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir.png"]
