"""Errors a person can fix from their message alone: bad config, a missing base, a corrupt checkpoint.

The ``stamen`` command prints such an error as one line naming the file or key and what to do, with
no traceback (``stamen --debug`` shows it). Every other exception is a bug and keeps its traceback,
which never lists local variables: on a device they may hold private data.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or state a person can fix; the message names it and says what to do."""
