"""Calling the master (used by the frontend, ``darkroom submit`` and seed-style workers).

Error answers are raised as ``darkroom.contract.errors`` types.
"""

from __future__ import annotations

from darkroom.core.discovery import ServiceClient
from darkroom.core.leases import LeaseLost, LeaseRoutes, TaskLeases, TaskWasCancelled

__all__ = ["LeaseLost", "MasterClient", "TaskWasCancelled"]

# The seed's worker routes: the master relays each to the database.
SEED_WORKER_ROUTES = LeaseRoutes(finish="/registerTaskFinished")


class MasterClient(TaskLeases):
    """The master's service; its leased calls are the seed's worker routes."""

    def __init__(self, service: ServiceClient) -> None:
        super().__init__(service, "master", SEED_WORKER_ROUTES)
