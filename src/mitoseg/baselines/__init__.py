"""Straightforward whole-volume implementations (scikit-image / numpy) of our decoders and metrics.

They are the oracles the fast versions are tested against and the references that
``benchmarks/`` measures them against. They hold whole volumes (and float64 copies) in memory:
do not use them on large data.
"""
