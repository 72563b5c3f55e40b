"""The master: the public API for clients, and the task API for workers."""
