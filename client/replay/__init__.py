"""Replay against forgetting on the device: the training hook, the registry of sources and each source.

Importing the package registers every source: a new one is a module here and one import line below."""

from . import anchor, ewc, self_replay  # noqa: F401  (each registers its source)
