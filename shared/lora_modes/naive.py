"""``naive``: A and B are averaged separately, like any other adapter tensors."""

from .base import LoraMode
from .registry import register


@register("naive")
class Naive(LoraMode):
    methods = None
