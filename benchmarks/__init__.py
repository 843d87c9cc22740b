"""Reproducible measurements: answer equivalence and throughput against the transformers 4.57 reference."""
