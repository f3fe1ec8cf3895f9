"""What a client sends: the change training made to the shared adapter, never the adapter itself.

The server adds the weighted mean of these deltas to the global adapter, so a delta must be
exactly trained - received for every shared tensor. Tensors the server did not send (a
personal part such as fedsa's B) stay on the device.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from stamen.shared.training import NothingTrained


def shared_delta(trained: Mapping[str, np.ndarray], received: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """trained - received for every tensor the server sent; an all-zero delta is no update."""
    delta = {name: trained[name] - value for name, value in received.items()}
    if not any(value.any() for value in delta.values()):
        raise NothingTrained("training changed no value of the shared adapter: an all-zero delta is no update")
    return delta


def personal_part(trained: Mapping[str, np.ndarray], received: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The trained tensors the server did not send: they are kept on the device, never uploaded."""
    return {name: value for name, value in trained.items() if name not in received}
