"""The error of the measurement stage (:mod:`mitoseg.analyze.measure`)."""

from __future__ import annotations


class MeasureError(ValueError):
    """Labels or parameters that cannot be measured; the message names what is at fault."""
