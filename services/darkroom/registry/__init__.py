"""The registry: a small key/value store where services publish their addresses."""
