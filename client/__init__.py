"""Everything that touches a device's private data: local training, evaluation, the ClientApp,
and :class:`PersonalModel`, the API an app embeds to personalise on the device."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .edge import PersonalModel

__all__ = ["PersonalModel"]


def __getattr__(name: str) -> object:
    """``PersonalModel`` imports torch; load it on first use, so a device's per-message process stays light."""
    if name == "PersonalModel":
        from .edge import PersonalModel

        return PersonalModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
