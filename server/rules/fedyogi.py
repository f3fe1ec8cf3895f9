"""FedYogi: v <- v - (1-b2)*d^2*sign(v - d^2), so v grows more slowly than under Adam."""

import numpy as np

from .fedopt import FedOpt
from .registry import register


@register("fedyogi")
class FedYogi(FedOpt):
    def second_moment(self, v, delta):
        b2 = self.options["beta_2"]
        return v - (1 - b2) * delta**2 * np.sign(v - delta**2)
