"""Settings of the whole test session.

* XLA compiles for speed (tests/xla_settings.py: most optimisations off, the older CPU
  fusion emitters), here and, through the environment, in the subprocesses tests start: the
  programs are tiny, so compiling them costs more than running them. No test here depends
  on the optimised program (tests/test_golden.py's tolerances hold what its stored numbers,
  made with the optimisations on, differ by).
* One persistent XLA compilation cache for the session (each pytest-xdist worker its own),
  in a temporary directory, also given to subprocesses through the environment: a program
  that another jit, another run of the same config or another process compiled before is
  read from disk, not compiled again.
* Tiers: `slow` marks tests over ~2 s of CPU time (trainings, subprocesses);
  `pytest -m "not slow"` is the fast tier, which still exercises every module of
  fast_ast_jax (`-n 0 --module-report` shows it).

Reports for tiering (tests/report.py, with -n 0): `--cpu-durations N`, `--module-report`.
"""
from __future__ import annotations

import os

from tests import xla_settings

xla_settings.apply()  # before jax starts

import jax  # noqa: E402
import pytest  # noqa: E402
from jax.experimental.compilation_cache import compilation_cache  # noqa: E402

pytest_plugins = ["tests.report"]

# Compilations shorter than this are not worth a file (thousands of one-op programs).
CACHE_MIN_COMPILE_S = 0.1


@pytest.fixture(scope="session", autouse=True)
def fast_compile():
    """Most XLA optimisations off (also when jax was imported before this conftest read
    the environment)."""
    jax.config.update("jax_disable_most_optimizations", True)


@pytest.fixture(scope="session", autouse=True)
def compilation_cache_dir(tmp_path_factory):
    """The session's persistent compilation cache (its directory), in jax's config for this
    process and in the environment for subprocesses."""
    path = str(tmp_path_factory.mktemp("xla-cache"))
    os.environ.update({"JAX_COMPILATION_CACHE_DIR": path,
                       "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": str(CACHE_MIN_COMPILE_S),
                       "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"})
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_S)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    compilation_cache.reset_cache()
    return path
