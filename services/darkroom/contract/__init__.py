"""The wire vocabulary every role shares; no role's internals, no third-party imaging code."""
