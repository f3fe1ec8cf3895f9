"""FedAdagrad: v <- v + d^2."""

from .fedopt import FedOpt
from .registry import register


@register("fedadagrad")
class FedAdagrad(FedOpt):
    def second_moment(self, v, delta):
        return v + delta**2
