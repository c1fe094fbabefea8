"""Exporters: the library's numbers, codec and conformance cases for VMMs in other languages.

``render(lang)`` gives the text of one export:

``c``
    a C header (:mod:`kvmspe.export.c_header`);
``rust``
    a Rust module (:mod:`kvmspe.export.rust_module`);
``c-selftest``
    a C conformance program in the kernel selftests' style
    (:mod:`kvmspe.export.c_selftest`);
``kselftest``
    the same cases as a KVM selftest for a kernel tree's
    ``tools/testing/selftests/kvm`` (:mod:`kvmspe.export.kselftest`).

Everything is generated from the data when asked, so a number, register field
or conformance case added to the library appears in every export.
"""

from __future__ import annotations

import importlib

from ..errors import InvalidArgumentError

__all__ = ["LANGS", "render"]

#: Export name -> what it is (for the command line's help).
LANGS = {
    "c": "a C header: numbers, register fields, MaxBuffSize codec (static inline)",
    "rust": "a Rust module: the same, with const fn",
    "c-selftest": "a C conformance program (TAP), one test per conformance case",
    "kselftest": "the conformance cases as a KVM selftest (kvm_util, kselftest TAP) for a kernel tree",
}


#: Export name -> the module of this package whose ``render()`` makes it.
_MODULES = {"c": "c_header", "rust": "rust_module", "c-selftest": "c_selftest", "kselftest": "kselftest"}


def render(lang: str) -> str:
    """The text of the ``lang`` export (see the module docstring)."""
    if lang not in _MODULES:
        raise InvalidArgumentError(f"unknown export language {lang!r}; accepted: {', '.join(LANGS)}")
    module = importlib.import_module(f".{_MODULES[lang]}", __name__)
    text: str = module.render()
    return text
