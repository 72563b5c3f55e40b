"""The small core every role shares: config, discovery, app factory, errors, health."""
