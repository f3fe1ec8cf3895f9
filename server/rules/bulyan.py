"""Bulyan (El Mhamdi et al. 2018): Krum picks n - 2f deltas, then a trimmed mean around the median.

Needs n >= 4f + 3 clients; Flower's aggregate_bulyan raises a clear error otherwise.
"""

from flwr.server.strategy.aggregate import aggregate_bulyan, aggregate_krum

from .buffered import BufferedRule, Results
from .registry import register


@register("bulyan")
class Bulyan(BufferedRule):
    @classmethod
    def option_defaults(cls) -> dict[str, float]:
        return {"f": 1}

    def combine(self, results: Results):
        return aggregate_bulyan(
            results, num_malicious=int(self.options["f"]), aggregation_rule=aggregate_krum, to_keep=0
        )
