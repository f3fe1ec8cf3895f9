"""Everything that touches a device's private data: local training, evaluation, the ClientApp,
and :class:`PersonalModel`, the API an app embeds to personalise on the device."""

from .edge import PersonalModel

__all__ = ["PersonalModel"]
