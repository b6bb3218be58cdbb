"""The errors of tandem that callers catch by type (the CLI maps each to an exit status)."""

from __future__ import annotations

__all__ = ["ConfigError", "NonFiniteError"]


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range (names the key)."""


class NonFiniteError(FloatingPointError):
    """A loss was not finite and the configuration asked to stop (``nonfinite="raise"``)."""
