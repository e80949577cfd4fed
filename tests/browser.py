"""Test helpers for the browser side: a gateway configuration that the developer's environment cannot change."""

from gateway.config import VARIABLES


def hermetic(**overrides):
    """Every gateway variable named: unset ones as empty (their default), so nothing exported leaks in."""
    return {**{name: "" for name in VARIABLES}, "GATEWAY_BIND": "", "GATEWAY_WORKERS": "1",
            "GATEWAY_THREADS": "8", **overrides}
