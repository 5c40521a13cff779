"""fast_ast_jax: fast Audio Spectrogram Transformers in JAX/Flax."""
__version__ = "0.1.0"
