"""The role table: every role's name, default port, registry key and kind, written once.

The Helm chart has the same table (``darkroom.roles`` in ``helm/darkroom/templates/_helpers.tpl``);
tests/deploy/test_roles.py checks the two agree.
"""

from __future__ import annotations

import dataclasses
import enum


class RoleKind(enum.StrEnum):
    PUBLIC = "public"  # reached from outside the release: the API, the web page
    INTERNAL = "internal"  # called only by other roles
    STATEFUL = "stateful"  # internal, and one pod at a time on its own volume
    BACKGROUND = "background"  # calls others, called by none: serves health and metrics only


@dataclasses.dataclass(frozen=True)
class Role:
    name: str
    port: int
    # /healthz and /readyz alone, for the kubelet's probes (DARKROOM_HEALTH_PORT in the chart)
    health_port: int
    kind: RoleKind
    # The registry key it advertises its address under ("" if it advertises none)
    registry_key: str
    # The roles it calls, besides the registry, which every other role calls
    calls: tuple[str, ...] = ()


ROLE_TABLE = (
    Role("registry", 3000, 3100, RoleKind.INTERNAL, ""),
    Role("database", 3001, 3101, RoleKind.STATEFUL, "databaseAddress"),
    Role("storage", 3002, 3102, RoleKind.STATEFUL, "storageAddress"),
    Role("master", 3003, 3103, RoleKind.PUBLIC, "masterAddress", calls=("database", "storage")),
    Role("worker", 9100, 9101, RoleKind.BACKGROUND, "", calls=("database", "storage")),
    Role("frontend", 8080, 8180, RoleKind.PUBLIC, "frontendAddress", calls=("master",)),
)
ROLES = tuple(role.name for role in ROLE_TABLE)
BY_NAME = {role.name: role for role in ROLE_TABLE}
DEFAULT_PORTS = {role.name: role.port for role in ROLE_TABLE}
HEALTH_PORTS = {role.name: role.health_port for role in ROLE_TABLE}
ADDRESS_KEYS = {role.name: role.registry_key for role in ROLE_TABLE if role.registry_key}
