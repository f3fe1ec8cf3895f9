"""FedAvg (McMahan et al. 2017): the example-weighted mean delta, scaled by a server learning rate."""

from .base import AggregationRule, Arrays
from .registry import register


@register("fedavg")
class FedAvg(AggregationRule):
    plain_mean = True

    @classmethod
    def option_defaults(cls) -> dict[str, float]:
        return {"server_lr": 1.0}

    def step(self, global_adapter: Arrays, mean_delta: Arrays) -> Arrays:
        lr = self.options["server_lr"]
        return {k: global_adapter[k] + lr * mean_delta[k] for k in global_adapter}
