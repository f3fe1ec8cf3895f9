"""Multi-Krum: the example-weighted mean of the ``m`` best-scored deltas under Krum's score, via Flower."""

from flwr.server.strategy.aggregate import aggregate_krum

from .buffered import BufferedRule, Results
from .registry import register


@register("multikrum")
class MultiKrum(BufferedRule):
    @classmethod
    def option_defaults(cls) -> dict[str, float]:
        return {"f": 1, "m": 2}

    def combine(self, results: Results):
        return aggregate_krum(results, num_malicious=int(self.options["f"]), to_keep=int(self.options["m"]))
