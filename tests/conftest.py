"""Shared hypothesis settings: the "ci" profile keeps the suite fast and reproducible enough.

Select another profile with ``--hypothesis-profile``; "ci" is the default.
"""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    deadline=None,
    derandomize=False,
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("ci")
