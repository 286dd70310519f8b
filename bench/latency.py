"""Round-trip times: percentiles, and the histogram that load generators fill.

Theory of operation: a load generator times every round trip in integer
nanoseconds and records it in a :class:`Histogram`; at the end of a run it
sends the histogram (a few hundred bucket counts, whatever the number of
round trips) to the harness as JSON, and the harness merges the histograms of
every load generator of the measurement and reads percentiles from the merged
one. Recording costs one dictionary update, so timing every round trip does
not make the client slower.

Buckets are log-linear: every value below 256 ns has a bucket of its own, and
above that every power of two is split into 128 equal buckets, so a bucket is
never wider than 1/128 of its lower bound. A percentile is the midpoint of the
bucket that holds the sample of that rank, within 1/256 (0.4 %) of the exact
value. Ranks are nearest-rank (:func:`rank`): the p-th percentile of N samples
is the smallest sample that at least p % of the samples do not exceed, always
one of the samples, never an interpolation between two.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

#: Each power of two above :data:`EXACT_BELOW` is split into ``2**SUB_BUCKET_BITS`` buckets.
SUB_BUCKET_BITS = 7
#: Values below this have a bucket of their own.
EXACT_BELOW = 1 << (SUB_BUCKET_BITS + 1)


def rank(percent: float, count: int) -> int:
    """The 1-based nearest rank of the ``percent``-th percentile among ``count`` samples.

    Raises:
        ValueError: ``count`` is not positive or ``percent`` is outside 0-100.
    """
    if count <= 0:
        raise ValueError("no samples")
    if not 0 <= percent <= 100:
        raise ValueError(f"percentile {percent} outside 0-100")
    # Rounded first, so that float noise (99.9 * 1000 / 100 = 999.0000000000001)
    # does not push the rank up by one.
    return max(1, math.ceil(round(percent * count / 100, 6)))


def percentile(samples: Sequence[float], percent: float) -> float:
    """The nearest-rank ``percent``-th percentile of ``samples`` (exact; sorts a copy).

    Raises:
        ValueError: ``samples`` is empty or ``percent`` is outside 0-100.
    """
    return sorted(samples)[rank(percent, len(samples)) - 1]


def bucket(value: int) -> int:
    """The index of the bucket that holds ``value`` (a non-negative integer)."""
    shift = value.bit_length() - SUB_BUCKET_BITS - 1
    if shift <= 0:
        return value
    return (shift << SUB_BUCKET_BITS) + (value >> shift)


def bucket_bounds(index: int) -> tuple[int, int]:
    """The lowest and the highest value that bucket ``index`` holds (both included)."""
    if index < EXACT_BELOW:
        return index, index
    shift = (index >> SUB_BUCKET_BITS) - 1
    top = index - (shift << SUB_BUCKET_BITS)
    return top << shift, ((top + 1) << shift) - 1


class Histogram:
    """Counts of integer values (nanoseconds) in log-linear buckets.

    Attributes:
        counts: bucket index (see :func:`bucket`) to number of values.
    """

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}

    def record(self, value: int) -> None:
        """Count one value; a negative one counts as 0. Costs about 0.3 µs."""
        index = bucket(max(0, value))
        self.counts[index] = self.counts.get(index, 0) + 1

    @property
    def count(self) -> int:
        """How many values were recorded."""
        return sum(self.counts.values())

    def merge(self, other: Histogram) -> None:
        """Add the counts of ``other`` to this histogram."""
        for index, count in other.counts.items():
            self.counts[index] = self.counts.get(index, 0) + count

    @classmethod
    def merged(cls, histograms: Iterable[Histogram]) -> Histogram:
        """One histogram holding the counts of all of ``histograms``."""
        total = cls()
        for histogram in histograms:
            total.merge(histogram)
        return total

    def percentile(self, percent: float) -> float:
        """The nearest-rank ``percent``-th percentile, within 1/256 of the exact value.

        Raises:
            ValueError: the histogram is empty or ``percent`` is outside 0-100.
        """
        wanted = rank(percent, self.count)
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= wanted:
                low, high = bucket_bounds(index)
                return (low + high) / 2
        raise AssertionError("unreachable: the ranks add up to the count")

    def to_json(self) -> list[list[int]]:
        """``[[bucket index, count], ...]``, for :meth:`from_json` in another process."""
        return [[index, count] for index, count in sorted(self.counts.items())]

    @classmethod
    def from_json(cls, pairs: Any) -> Histogram:
        """The histogram that :meth:`to_json` described.

        Raises:
            ValueError: ``pairs`` is not a list of two-integer pairs.
        """
        histogram = cls()
        try:
            for index, count in pairs:
                histogram.counts[int(index)] = histogram.counts.get(int(index), 0) + int(count)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"not a histogram: {pairs!r:.80}") from exc
        return histogram
