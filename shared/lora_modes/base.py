"""What a LoRA aggregation mode is: which of A and B travel, stay frozen or stay personal, and what it
can be combined with. The rest of Stamen asks the mode's class instead of testing its name."""

from __future__ import annotations

from typing import ClassVar

from stamen.shared.plugins import Plugin

A, B = ".lora_A.", ".lora_B."


class LoraMode(Plugin):
    kind = "lora-aggregation mode"
    methods: ClassVar[tuple[str, ...] | None] = ("lora", "dora")  # adapter methods it works on (None: any)
    methods_reason: ClassVar[str] = "it acts on LoRA's A and B"
    secure_sums: ClassVar[bool] = True  # works when the server sees only the sum of updates
    lower_client_ranks: ClassVar[bool] = True  # clients may train at a lower rank than the server's
    personal_models: ClassVar[bool] = True  # combines with personalisation ditto / finetune
    corrects_products: ClassVar[bool] = False  # the server keeps a residual of B*A products (needs a plain mean)

    @classmethod
    def is_personal(cls, name: str) -> bool:
        """Whether a trainable tensor stays on the device instead of going to the server."""
        return False

    @classmethod
    def is_frozen(cls, name: str) -> bool:
        """Whether a tensor is frozen at its seeded initial value on every party."""
        return False
