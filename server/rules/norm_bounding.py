"""Norm bounding (Sun et al. 2019): scale each delta down to at most ``bound`` in L2 norm, then average."""

from stamen.shared.clipping import clip_l2

from .base import AggregationRule, ClientUpdate
from .registry import register


@register("norm-bounding")
class NormBounding(AggregationRule):
    needs_individual_updates = True  # the server must see each update to measure its norm

    @classmethod
    def option_defaults(cls) -> dict[str, float]:
        return {"bound": 1.0}

    def add(self, update: ClientUpdate) -> None:
        clipped = clip_l2(update.delta, self.options["bound"])
        super().add(ClientUpdate(update.client, clipped, update.weight, update.extras))
