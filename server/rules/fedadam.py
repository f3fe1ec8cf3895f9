"""FedAdam: v <- b2*v + (1-b2)*d^2."""

from .fedopt import FedOpt
from .registry import register


@register("fedadam")
class FedAdam(FedOpt):
    def second_moment(self, v, delta):
        b2 = self.options["beta_2"]
        return b2 * v + (1 - b2) * delta**2
