"""PyTorch reference definitions used as parity oracles (not pip-installable upstream code,
copied with attribution and their licences; only the tests import them)."""
