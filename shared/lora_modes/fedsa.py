"""``fedsa`` (FedSA-LoRA, Guo et al. 2025): A is shared and averaged, B stays on the device as its personal part."""

from .base import B, LoraMode
from .registry import register


@register("fedsa")
class SharedAPersonalB(LoraMode):
    personal_models = False  # B is already personal

    @classmethod
    def is_personal(cls, name: str) -> bool:
        return B in name
