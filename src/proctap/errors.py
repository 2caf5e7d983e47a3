"""Errors proctap raises.  Every message is one line that says what is wrong and what to do."""

from __future__ import annotations

__all__ = ["BackendUnavailable", "DecodeError", "ProctapError"]


class ProctapError(Exception):
    """Base of proctap's errors.  ``str(err)`` is a complete one-line message fit for a user."""


class BackendUnavailable(ProctapError):
    """The requested backend cannot work here (missing capability, kernel option, namespace...)."""


class DecodeError(ProctapError, ValueError):
    """Bytes from the kernel (or a capture) do not decode as the expected structure."""
