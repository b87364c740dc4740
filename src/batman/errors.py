"""The one error type users see. Its own module so that the lowest layers (files, config) share it
without importing each other; `batman.config.BatmanError` is the same class."""
from __future__ import annotations


class BatmanError(Exception):
    """A user-facing error: the CLI prints its one-line message without a traceback (exit code 2)."""
