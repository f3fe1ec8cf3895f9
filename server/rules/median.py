"""Coordinate-wise median of the deltas (Yin et al. 2018), via Flower's aggregate_median."""

from flwr.server.strategy.aggregate import aggregate_median

from .buffered import BufferedRule, Results
from .registry import register


@register("median")
class Median(BufferedRule):
    def combine(self, results: Results):
        return aggregate_median(results)
