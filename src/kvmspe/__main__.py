"""``python -m kvmspe``: the same command line as the ``kvmspe`` script."""

try:
    from .cli import main
except KeyboardInterrupt:
    # SIGINT while the command line is still being imported: as once it runs,
    # one line and exit status 130, never a traceback.
    import sys

    __import__("_signal").signal(2, 1)  # SIGINT, SIG_IGN: a second one cannot interrupt the line
    try:
        sys.stderr.write("kvmspe: interrupted\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):  # stderr closed, full or gone
        pass
    raise SystemExit(130) from None

raise SystemExit(main())
