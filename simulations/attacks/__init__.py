"""Client behaviours for robustness research, registered by name and chosen by the ``attack`` config key."""

from . import backdoor, update_attacks  # noqa: F401  (registration)
from .base import Attack
from .registry import ATTACKS, make_attack, register
from .selection import attack_for, malicious_partitions

__all__ = ["ATTACKS", "Attack", "attack_for", "make_attack", "malicious_partitions", "register"]
