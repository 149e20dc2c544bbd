"""
Tests for rpcapsvc.

Hypothesis runs under a deterministic profile, as Twisted's own test suite
does, so that a run is reproducible and a CI failure can be replayed;
set C{HYPOTHESIS_PROFILE} to pick another registered profile.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "rpcapsvc",
    derandomize=True,
    deadline=None,
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "rpcapsvc"))
