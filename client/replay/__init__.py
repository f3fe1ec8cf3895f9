"""Replay against forgetting on the device: the training hook, the registry of sources and each source.

Importing the package imports every module in it, so each source registers itself (``@register``): a new one is a
module here, and its name in :data:`stamen.shared.config.REPLAY_SOURCES` (the ``replay`` key's vocabulary)."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
