"""The Prometheus text exposition format (version 0.0.4), written without the client library.

A metric family is a name, a help text, a type and samples; each sample
has labels and a value. :func:`render` writes the families as
``# HELP``, ``# TYPE`` and sample lines, the format node_exporter's
textfile collector and any Prometheus server read. Escaping follows the
format's rules: in a help text a backslash and a line feed become ``\\\\`` and
``\\n``; in a label value a double quote becomes ``\\"`` as well. Values are
floats in Go's notation, with ``+Inf``, ``-Inf`` and ``NaN`` spelled so.
Names are checked against the format's grammar (ValueError), so a bad name
is found where it is made, not by the server that scrapes it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .errors import InvalidArgumentError

__all__ = ["MetricFamily", "Sample", "TYPES", "escape_help", "escape_label_value", "format_value", "render"]

#: The metric types this module writes (no histograms or summaries: nothing here needs them).
TYPES = ("gauge", "counter", "untyped")

_NAME_START = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"
_NAME_REST = _NAME_START + "0123456789"


def _check_name(kind: str, name: str, colon: bool) -> str:
    start = _NAME_START + (":" if colon else "")
    rest = _NAME_REST + (":" if colon else "")
    if not isinstance(name, str) or not name or name[0] not in start or name.strip(rest):
        raise InvalidArgumentError(f"bad Prometheus {kind} name {name!r}: accepted: [a-zA-Z_][a-zA-Z0-9_]*")
    if kind == "label" and name.startswith("__"):
        raise InvalidArgumentError(f"bad Prometheus label name {name!r}: names starting with __ are reserved")
    return name


def escape_help(text: str) -> str:
    """A help text for a ``# HELP`` line: ``\\`` and line feeds escaped."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def escape_label_value(text: str) -> str:
    """A label value for between double quotes: ``\\``, ``"`` and line feeds escaped."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_value(value: float) -> str:
    """A sample value: integers exactly (``4194304``), other floats with ``repr``,
    infinities and NaN as the format spells them."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


@dataclass(frozen=True)
class Sample:
    """One line of a family: label pairs (in the order given) and a value."""

    labels: tuple[tuple[str, str], ...]
    value: float


@dataclass
class MetricFamily:
    """A metric: name, help text, type and its samples (added with :meth:`add`)."""

    name: str
    help: str
    type: str = "gauge"
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_name("metric", self.name, colon=True)
        if self.type not in TYPES:
            raise InvalidArgumentError(f"bad metric type {self.type!r}; accepted: {', '.join(TYPES)}")

    def add(self, value: float, labels: Sequence[tuple[str, str]] = ()) -> None:
        """Append a sample with ``labels`` (name, value) pairs."""
        for name, _ in labels:
            _check_name("label", name, colon=False)
        self.samples.append(Sample(tuple(labels), value))


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels) + "}"


def render(families: Iterable[MetricFamily]) -> str:
    """The exposition text of ``families``, one HELP and TYPE line each, then its samples.

    A family without samples is still written (its HELP and TYPE), so a
    scraper sees that the metric exists and has no series now.
    """
    out: list[str] = []
    for fam in families:
        out.append(f"# HELP {fam.name} {escape_help(fam.help)}")
        out.append(f"# TYPE {fam.name} {fam.type}")
        out += [f"{fam.name}{_labels(s.labels)} {format_value(s.value)}" for s in fam.samples]
    return "".join(line + "\n" for line in out)
