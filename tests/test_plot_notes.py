"""``plan --plot`` tells apart figures that round alike, and carries the planner's warnings.

The legend gives each pinning case its amplification at the chosen size;
best and typical are often within a few thousandths of each other, so two
decimals would print both as ``x1.00``. The planner's warnings (overcommit,
a size rounded or clamped) are drawn under the axes, in a colour nothing
else in the plot uses, so the PNG itself shows whether they are there.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_plot import need_matplotlib, pixels

from kvmspe import planner
from kvmspe import plot as plotting


def test_ratios_get_more_decimals_only_where_two_would_read_alike() -> None:
    assert plotting.distinct_ratios({"best": 1.0001, "typical": 1.0021, "worst": 1.0078}) == {
        "best": "x1.000",
        "typical": "x1.002",
        "worst": "x1.01",
    }
    assert plotting.distinct_ratios({"a": 1.25, "b": 16.0547}) == {"a": "x1.25", "b": "x16.05"}
    # Equal values are no clash: they keep two decimals.
    assert plotting.distinct_ratios({"a": 1.0, "b": 1.0}) == {"a": "x1.00", "b": "x1.00"}
    # Values that differ below the last decimal allowed stop there rather than loop.
    assert plotting.distinct_ratios({"a": 1.0, "b": 1.0 + 1e-12}, most=4) == {"a": "x1.0000", "b": "x1.0000"}


def _draw(tmp_path: Path, vcpus: int, size: int) -> tuple[object, planner.Plan, Path]:
    need_matplotlib()
    host = planner.PlanHost.from_profile("default-4k")
    plan = planner.plan(vcpus, size, host=host)
    target = tmp_path / "pinned.png"
    fig = plotting.draw(plotting.figure_class(), plan, plotting.sweep(plan))
    plotting.save(fig, str(target))
    return fig, plan, target


def _legend(fig: object) -> list[str]:
    ax = fig.axes[0]  # type: ignore[attr-defined]
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_best_and_typical_read_differently_in_the_legend(tmp_path: Path) -> None:
    fig, plan, _ = _draw(tmp_path, 4, 4 << 20)
    best, typical = plan.pinned["best"].amplification, plan.pinned["typical"].amplification
    assert f"{best:.2f}" == f"{typical:.2f}"  # the case this is for: two decimals do not tell them apart
    labels = _legend(fig)
    shown = {label.split()[0]: label.split()[1].strip("(") for label in labels[:3]}
    assert shown["best"] != shown["typical"]
    assert float(shown["best"][1:]) == pytest.approx(best, abs=0.001)
    assert float(shown["typical"][1:]) == pytest.approx(typical, abs=0.001)


def _note_rows(target: Path) -> int:
    """Pixel rows of the PNG's lower fifth holding the notes' colour."""
    rgb = [int(plotting.NOTE_COLOUR[i : i + 2], 16) for i in (1, 3, 5)]
    img = pixels(target)
    low = img[img.shape[0] * 4 // 5 :]
    return int((abs(low - rgb) <= 24).all(axis=2).any(axis=1).sum())


def test_the_planners_warnings_are_drawn_under_the_axes(tmp_path: Path) -> None:
    fig, plan, target = _draw(tmp_path, 64, 4 << 20)
    assert any("64 VCPUs on SPU 10" in w for w in plan.warnings)
    texts = "\n".join(t.get_text() for t in fig.texts)  # type: ignore[attr-defined]
    assert "warning: 64 VCPUs on SPU 10" in texts and "--strict-placement" in texts
    assert _note_rows(target) > 0


def test_a_plan_without_warnings_draws_no_notes(tmp_path: Path) -> None:
    fig, plan, target = _draw(tmp_path, 4, 4 << 20)
    assert plan.warnings == []
    assert fig.texts == []  # type: ignore[attr-defined]
    assert _note_rows(target) == 0
