"""FedProx (Li et al. 2020): FedAvg on the server; clients add (mu/2)||w - w_global||^2 to their loss.

The proximal term lives in the client's training loop (``proximal-mu`` config key);
on the server FedProx aggregates exactly like FedAvg.
"""

from .fedavg import FedAvg
from .registry import register


@register("fedprox")
class FedProx(FedAvg):
    pass
