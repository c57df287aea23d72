"""Medians and spreads of repeated measurements, and their formatting."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Spread:
    """The median of repeated measurements, with their minimum and maximum."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        """Median of the values."""
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        """Smallest value."""
        return min(self.values)

    @property
    def high(self) -> float:
        """Largest value."""
        return max(self.values)

    def format(self, digits: int = 0, unit: str = "") -> str:
        """Return ``median (low–high) unit``, the notation of every table."""
        suffix = f" {unit}" if unit else ""
        if len(self.values) == 1:
            return f"{self.median:.{digits}f}{suffix}"
        return (
            f"{self.median:.{digits}f} ({self.low:.{digits}f}–"
            f"{self.high:.{digits}f}){suffix}"
        )


def spread(values: Sequence[float]) -> Spread:
    """Return the spread of ``values``, which must not be empty."""
    if not values:
        raise ValueError("a spread needs at least one value")
    return Spread(tuple(float(value) for value in values))


def verdict(value: float, limit: float, *, at_most: bool) -> str:
    """Return "met" or "missed" for a target of ``<= limit`` or ``>= limit``."""
    met = value <= limit if at_most else value >= limit
    return "met" if met else "MISSED"
