"""Conformance suite set-up: the ``requires(Feature...)`` marker selects the backends a test runs for."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "requires(*features): run only for backends that declare these features")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A feature no working backend declares yields no test at all (rather than an "empty parameter set" skip)."""
    keep, drop = [], []
    for item in items:
        skip = item.get_closest_marker("skip")
        if skip is not None and str(skip.kwargs.get("reason", "")).startswith("got empty parameter set"):
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
