"""How XLA compiles in the tests (tests/conftest.py) and in tests/data/make_golden.py, which
must compile the same way for its stored outputs to be reproduced exactly.

The programs here are tiny, so compiling them costs more than running them:
* most XLA optimisations off (jax_disable_most_optimizations, as in the flax examples'
  train tests);
* XLA's CPU fusion emitters of before the MLIR ones (--xla_cpu_use_fusion_emitters=false):
  measured 2026-12-06 on this suite's model tests, 2.3x less compile time and a third
  less CPU time, the same results to float32 rounding.

Both go through the environment (read when jax starts and when XLA makes its CPU client),
so `apply` runs before jax is imported and subprocesses inherit them. An XLA that does not
know a flag aborts the process, so the emitter flag is first tried in a subprocess.
"""
from __future__ import annotations

import os
import subprocess
import sys

FAST_EMITTERS = "--xla_cpu_use_fusion_emitters=false"


def _xla_accepts(flags: str) -> bool:
    probe = "import jax; jax.numpy.zeros(1).block_until_ready()"
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                          timeout=300).returncode == 0


def apply() -> None:
    """Set this process's (and its future subprocesses') environment; call it before jax
    is imported."""
    os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
    flags = os.environ.get("XLA_FLAGS", "")
    if FAST_EMITTERS not in flags:
        wanted = f"{flags} {FAST_EMITTERS}".strip()
        if _xla_accepts(wanted):
            os.environ["XLA_FLAGS"] = wanted


def with_devices(n: int) -> dict[str, str]:
    """The environment for a subprocess that simulates `n` CPU devices (XLA reads the count
    when jax starts), keeping the session's XLA settings."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}"
    return {**os.environ, "XLA_FLAGS": flags.strip(), "JAX_PLATFORMS": "cpu"}
