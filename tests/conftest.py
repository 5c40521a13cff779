"""Shared fixtures. Modules that compile many tiny programs opt in to `fast_compile` with
`pytestmark = pytest.mark.usefixtures("fast_compile")`."""
from __future__ import annotations

import jax
import pytest


@pytest.fixture(scope="module")
def fast_compile():
    """Most XLA optimisations off (tiny programs: compile time dominates, as in the flax
    examples' train tests); restored afterwards for other test modules."""
    old = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)
