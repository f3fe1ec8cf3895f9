"""The ClientApp Flower loads (``stamen.client.app:app``), kept light to import.

On a deployed device Flower starts a fresh process for every message; there the app only forwards the
message to the device's worker (:mod:`stamen.client.device.worker`), so the process needs neither torch nor
the base. Elsewhere (``flwr run`` in simulation) it is the full ClientApp of :mod:`stamen.client.handlers`.
"""

from __future__ import annotations

import os

from .device.worker import WORKER_ADDRESS, forwarding_app

if WORKER_ADDRESS in os.environ:
    app = forwarding_app()
else:
    from .handlers import client_app_with

    app = client_app_with([])
