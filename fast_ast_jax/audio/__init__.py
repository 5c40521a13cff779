"""Audio loading and the Kaldi-compatible fbank front-end."""
from fast_ast_jax.audio.frontend import FrontEnd

__all__ = ["FrontEnd"]
