"""Beam metrics, all under the ``beam_qa`` namespace (see README "Metrics")."""

from apache_beam.metrics import Metrics

NAMESPACE = "beam_qa"


def counter(name: str):
    return Metrics.counter(NAMESPACE, name)


def distribution(name: str):
    return Metrics.distribution(NAMESPACE, name)
