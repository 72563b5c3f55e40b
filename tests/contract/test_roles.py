"""The role table: one entry per role, and the facts derived from it."""

from __future__ import annotations

from darkroom.contract.roles import (
    ADDRESS_KEYS,
    BY_NAME,
    DEFAULT_PORTS,
    ROLE_TABLE,
    ROLES,
    RoleKind,
)


def test_every_role_once_with_its_own_port() -> None:
    assert ROLES == ("registry", "database", "storage", "master", "worker", "frontend")
    assert len(set(DEFAULT_PORTS.values())) == len(ROLES)


def test_registry_keys_are_the_seeds() -> None:
    assert ADDRESS_KEYS == {
        "database": "databaseAddress",
        "storage": "storageAddress",
        "master": "masterAddress",
        "frontend": "frontendAddress",
    }


def test_calls_name_roles_that_others_can_reach() -> None:
    for role in ROLE_TABLE:
        for callee in role.calls:
            assert BY_NAME[callee].registry_key, (role.name, callee)
            assert BY_NAME[callee].kind is not RoleKind.BACKGROUND
