"""Shared fixtures: the tests run against the real kernel, as root."""
