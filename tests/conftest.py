"""Test session set-up: 8 fake CPU devices (sharding tests), f32 everywhere."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


def pytest_terminal_summary(terminalreporter):
    """Print the measured figures (parity errors, learning curves) of passing tests, also under xdist."""
    import re

    pat = re.compile(r"parity|rel\.? ?err|->")
    rows = []
    for rep in terminalreporter.stats.get("passed", []):
        for name, content in getattr(rep, "sections", []):
            if "stdout" in name:
                rows += [f"{rep.nodeid.split('::')[-1]}: {ln.strip()}" for ln in content.splitlines()
                         if ln.strip() and pat.search(ln)]
    if rows:
        terminalreporter.section("measured figures")
        for r in rows:
            terminalreporter.write_line(r)
