"""Test session set-up: 8 fake CPU devices (sharding tests), f32 everywhere."""
import os
import re

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Persistent XLA cache: the training tests compile the same steps in several processes
# (resume after kill -9, 1 vs 2 processes); the cache turns all but the first into loads.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                   ".cache", "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


def pytest_terminal_summary(terminalreporter):
    """Print the measured figures (parity errors, learning curves) of passing tests, also under xdist."""
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
