"""Name -> attack class, one decorator line per attack."""

from __future__ import annotations

from stamen.shared.plugins import Registry

from .base import Attack

_ATTACKS: Registry[Attack] = Registry("attack")
ATTACKS = _ATTACKS.classes
register = _ATTACKS.register
make_attack = _ATTACKS.make
