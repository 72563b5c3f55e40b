"""Where the registry keeps its keys: one interface; a file here, a ConfigMap in Kubernetes."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Protocol

from darkroom.core.atomicfile import make_private_directory, write_atomically

# The rules Kubernetes applies to ConfigMap keys, so every backend accepts the same keys.
KEY_PATTERN = re.compile(r"[-._a-zA-Z0-9]+")
MAX_KEY_LENGTH = 253
MAX_VALUE_LENGTH = 4096


class InvalidEntry(ValueError):
    """A key or value the registry refuses; the message says why."""


class StoreUnavailable(Exception):
    """The backend could not take the write now; the client may retry."""


class StoreFull(Exception):
    """The write would exceed what the backend can hold."""


def validate_key(key: str) -> None:
    if not key:
        raise InvalidEntry("key must not be empty")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidEntry(f"key is {len(key)} characters long; at most {MAX_KEY_LENGTH} allowed")
    if not KEY_PATTERN.fullmatch(key) or key in (".", ".."):
        raise InvalidEntry("key may contain only letters, digits, '-', '_' and '.'")


# host:port, the host a DNS name, IPv4 address or bracketed IPv6 address
ADDRESS_PATTERN = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]+\]):(\d{1,5})"
)


def validate_value(value: str, key: str = "") -> None:
    """Check a value; the value of a key ending in ``Address`` must look like host:port."""
    if not value:
        raise InvalidEntry("value must not be empty")
    if key.endswith("Address"):
        match = ADDRESS_PATTERN.fullmatch(value)
        if not match or not 1 <= int(match.group(1)) <= 65535:
            raise InvalidEntry(f"the value of {key!r} must be an address host:port")
    if len(value) > MAX_VALUE_LENGTH:
        raise InvalidEntry(f"value is {len(value)} characters; at most {MAX_VALUE_LENGTH} allowed")
    if not value.isprintable():
        raise InvalidEntry("value must be printable text without control characters")


class KeyValueStore(Protocol):
    def get(self, key: str) -> str | None: ...

    def set(self, key: str, value: str) -> None: ...

    def remove(self, key: str) -> bool:
        """Remove ``key``; False when it was not there."""
        ...

    def items(self) -> dict[str, str]: ...

    def problem(self) -> str | None:
        """None when the store can serve, else why not (drives ``/readyz``)."""
        ...


class FileKeyValueStore:
    """Keys in memory, persisted atomically to one JSON file so a restart keeps them."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._data: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}

    def get(self, key: str) -> str | None:
        with self._lock:
            return self._data.get(key)

    def set(self, key: str, value: str) -> None:
        with self._lock:
            if self._data.get(key) == value:
                return
            self._write({**self._data, key: value})

    def remove(self, key: str) -> bool:
        with self._lock:
            if key not in self._data:
                return False
            self._write({k: v for k, v in self._data.items() if k != key})
            return True

    def items(self) -> dict[str, str]:
        with self._lock:
            return dict(self._data)

    def problem(self) -> str | None:
        return None

    def _write(self, data: dict[str, str]) -> None:
        """Replace the file atomically, then the in-memory copy: memory never runs ahead of disk."""
        make_private_directory(self._path.parent)
        text = json.dumps(data, indent=1, sort_keys=True)
        write_atomically(self._path, text, prefix=".registry-")
        self._data = data
