"""Hypothesis profiles for the property-based tests of the parsers (tests/fuzz/).

``make test`` runs the ``ci`` profile: a fixed number of examples from a derandomised seed, so a
run is repeatable and its time bounded. ``make fuzz`` runs the ``fuzz`` profile: 10,000 examples
per property, still derandomised so that a failure it finds can be replayed.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=150, derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("fuzz", max_examples=10_000, derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("QA_FUZZ_PROFILE", "ci"))
