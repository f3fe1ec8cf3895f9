"""Krum (Blanchard et al. 2017): the delta closest to its n - f - 2 nearest neighbours, via Flower."""

from flwr.server.strategy.aggregate import aggregate_krum

from .buffered import BufferedRule, Results
from .registry import register


@register("krum")
class Krum(BufferedRule):
    @classmethod
    def option_defaults(cls) -> dict[str, float]:
        return {"f": 1}

    def combine(self, results: Results):
        return aggregate_krum(results, num_malicious=int(self.options["f"]), to_keep=0)
