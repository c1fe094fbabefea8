"""``python -m kvmspe``: the same command line as the ``kvmspe`` script."""

from .cli import main

raise SystemExit(main())
