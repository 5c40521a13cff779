"""Audio loading and the Kaldi-compatible fbank front-end."""
from fast_ast_jax.audio.fbank import fbank, mel_banks, num_frames, window_function
from fast_ast_jax.audio.features import features, features_from_file, normalize, pad_or_crop
from fast_ast_jax.audio.frontend import FrontEnd
from fast_ast_jax.audio.io import AudioError, load_audio, prepare_waveform

__all__ = [
    "AudioError",
    "FrontEnd",
    "fbank",
    "features",
    "features_from_file",
    "load_audio",
    "mel_banks",
    "normalize",
    "num_frames",
    "pad_or_crop",
    "prepare_waveform",
    "window_function",
]
