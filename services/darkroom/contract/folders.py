"""The storage's folders: where an image is in its life. The wire calls the folder ``state``
(``/sendImage?state=working``), a name from the seed; it is not a task state."""

from __future__ import annotations

import enum


class Folder(enum.StrEnum):
    WORKING = "working"  # the uploaded image, until the task ends
    FINISHED = "finished"  # the result
