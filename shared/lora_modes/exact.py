"""``exact``: A and B are averaged, and the server keeps the residual mean(B_k A_k) - mean(B) mean(A),
which clients add to the layers' outputs (server half ``server/lora_exact.py``, client half
``client/lora_corrections.py``)."""

from .base import LoraMode
from .registry import register


@register("exact")
class Exact(LoraMode):
    methods = ("lora",)
    methods_reason = "it corrects products B*A, which DoRA's magnitude normalisation does not add up"
    secure_sums = False  # it needs each client's B and A
    corrects_products = True
