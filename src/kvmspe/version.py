"""kvmspe's version, in the package's lowest layer so that every module may name it
(the exports write it into what they generate); ``pyproject.toml`` gives the same."""

__all__ = ["__version__"]

__version__ = "0.1.0"
