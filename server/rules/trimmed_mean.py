"""Coordinate-wise trimmed mean: drop the ``beta`` fraction of largest and smallest values per coordinate."""

from flwr.server.strategy.aggregate import aggregate_trimmed_avg

from .buffered import BufferedRule, Results
from .registry import register


@register("trimmed-mean")
class TrimmedMean(BufferedRule):
    @classmethod
    def option_defaults(cls) -> dict[str, float]:
        return {"beta": 0.2}

    def combine(self, results: Results):
        return aggregate_trimmed_avg(results, proportiontocut=self.options["beta"])
