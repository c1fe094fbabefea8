"""README.md and docs/*.md show real output: every example is run again and must print what the page shows.

An example block is a ```console fence; its ``$ COMMAND`` lines are run in
order with bash (``kvmspe`` is ``python3 -m kvmspe`` from this checkout) in
one empty directory per block, and each command's stdout and stderr together
must equal the lines that
follow it, up to the next ``$`` line, with ``[exit status N]`` standing for a
non-zero exit. A block whose output depends on the machine (this host's
kernel, limits or /dev/kvm) says so on the line before its fence, as
``<!-- not replayed: REASON -->``; the test checks that it gives a reason.
The one figure that differs from run to run, a duration at the end of a line
(``... in 0.01 s``), is compared as ``in N s``. The examples run with a soft
RLIMIT_MEMLOCK of 8 MiB, the limit the page shows (and a usual default).
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
_SKIP = re.compile(r"<!-- not replayed: (?P<why>.+?) -->")
_EXIT = re.compile(r"\[exit status (\d+)\]")
_DURATION = re.compile(r" in \d+(\.\d+)? s$", re.MULTILINE)


def _stable(text: str) -> str:
    return _DURATION.sub(" in N s", text)


@dataclass(frozen=True)
class Example:
    page: str
    line: int
    command: str
    output: str
    status: int


def _blocks(text: str) -> tuple[list[tuple[int, list[str]]], list[tuple[int, str]]]:
    """The replayed console blocks (first line number, lines) and the skipped ones (line, reason)."""
    lines = text.splitlines()
    replayed, skipped = [], []
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```console":
            start = i + 1
            end = start
            while lines[end].strip() != "```":
                end += 1
            before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            m = _SKIP.fullmatch(before.strip())
            if m:
                skipped.append((i + 1, m["why"]))
            else:
                replayed.append((start + 1, lines[start:end]))
            i = end
        i += 1
    return replayed, skipped


def _examples(page: Path) -> list[list[Example]]:
    replayed, _ = _blocks(page.read_text())
    blocks = []
    for first, block in replayed:
        out: list[Example] = []
        current: tuple[int, str] | None = None
        body: list[str] = []
        for n, line in enumerate([*block, "$ "]):
            if line.startswith("$ "):
                if current is not None:
                    while body and not body[-1].strip():
                        body.pop()
                    status = 0
                    if body and _EXIT.fullmatch(body[-1]):
                        status = int(_EXIT.fullmatch(body[-1]).group(1))  # type: ignore[union-attr]
                        body.pop()
                    out.append(Example(page.name, current[0], current[1], "\n".join(body), status))
                current, body = (first + n, line[2:]), []
            else:
                body.append(line)
        blocks.append(out)
    return blocks


BLOCKS = [block for page in PAGES for block in _examples(page) if block]


def test_the_pages_have_examples_and_every_unreplayed_block_says_why() -> None:
    assert sum(map(len, BLOCKS)) > 40
    for page in PAGES:
        _, skipped = _blocks(page.read_text())
        for line, why in skipped:
            assert len(why.split()) >= 3, f"{page.name} line {line}: give the reason a block is not replayed"


#: The soft RLIMIT_MEMLOCK the page's examples were run with.
MEMLOCK = 8 << 20


def _memlock_as_shown() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if hard == resource.RLIM_INFINITY or hard >= MEMLOCK:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (MEMLOCK, hard))


def _run(example: Example, cwd: Path) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVMSPE_")}
    env["PYTHONPATH"] = str(ROOT / "src")
    env["COLUMNS"] = "80"
    script = 'kvmspe() { python3 -m kvmspe "$@"; }\n' + example.command + "\n"
    proc = subprocess.run(
        ["bash", "-c", script],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
        preexec_fn=_memlock_as_shown,
    )
    return _stable(proc.stdout.rstrip("\n")), proc.returncode


@pytest.mark.parametrize("block", BLOCKS, ids=[f"{b[0].page}:{b[0].line}" for b in BLOCKS])
def test_example_block_prints_what_the_page_shows(block: list[Example], tmp_path: Path) -> None:
    for example in block:
        got = _run(example, tmp_path)
        assert got == (_stable(example.output), example.status), (
            f"{example.page} line {example.line}: $ {example.command}"
        )
