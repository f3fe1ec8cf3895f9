"""``ffa`` (FFA-LoRA, Sun et al. 2024): A stays at its seeded init everywhere, only B trains and travels,
so the mean of B times the shared A is exactly the mean of the products."""

from .base import A, LoraMode
from .registry import register


@register("ffa")
class FrozenA(LoraMode):
    lower_client_ranks = False  # A is frozen at the server's rank

    @classmethod
    def is_frozen(cls, name: str) -> bool:
        return A in name
