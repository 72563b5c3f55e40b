"""The storage: image files in ``working/`` and ``finished/``."""
