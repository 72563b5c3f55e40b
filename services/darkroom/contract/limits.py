"""Limits of what crosses the wire, checked by every role that receives it."""

from __future__ import annotations

import re

# A task id: 16 random bytes (128 bits) as base64url without padding.
TASK_ID_LENGTH = 22
TASK_ID_PATTERN = re.compile(f"[A-Za-z0-9_-]{{{TASK_ID_LENGTH}}}")
TASK_ID_DESCRIPTION = f"{TASK_ID_LENGTH} characters of A-Z a-z 0-9 _ -"

# The longest pipeline text a task may carry (the database refuses longer).
MAX_PIPELINE_CHARS = 1_000
# The longest error a task keeps; longer ones are cut.
MAX_ERROR_LENGTH = 2000
# A finished task's notes (what was skipped, kept or removed): at most this many, each cut.
MAX_NOTES = 20
MAX_NOTE_LENGTH = 500

# An upload's Idempotency-Key: 1 to 255 visible ASCII characters (no spaces, no controls).
MAX_IDEMPOTENCY_KEY_CHARS = 255
IDEMPOTENCY_KEY_PATTERN = re.compile(f"[\\x21-\\x7e]{{1,{MAX_IDEMPOTENCY_KEY_CHARS}}}")
IDEMPOTENCY_KEY_DESCRIPTION = (
    f"1 to {MAX_IDEMPOTENCY_KEY_CHARS} visible ASCII characters (no spaces)"
)
# A body's fingerprint: a SHA-256 in lowercase hex.
SHA256_HEX_PATTERN = re.compile("[0-9a-f]{64}")
