"""What a loaded checkpoint is: a model, its params, its front-end and its labels.

Every loader returns a `Bundle`: training checkpoints of any model kind
(fast_ast_jax.checkpoints) and imported HF / original AST / timm weights
(fast_ast_jax.convert), so `predict`, `evaluate.py` and `distill dump` take any of them.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import ml_collections

from fast_ast_jax.audio.frontend import FrontEnd


@dataclasses.dataclass(frozen=True)
class Bundle:
    """A loaded checkpoint: `model.apply({"params": params}, x)` gives the logits.

    Attributes:
        model: AST, CNNTeacher or ElasticAST (fast_ast_jax.models registry).
        params: nested dict of arrays (numpy or host jax arrays) for `model`.
        frontend: the waveform -> fbank settings the model was trained with.
        labels: one name per output logit.
        loss: "softmax" (single-label) or "sigmoid" (multi-label): how scores are made.
        config: the training run's config (None for imported weights).
        step: the training step of the checkpoint (None for imported weights).
    """

    model: nn.Module
    params: Any
    frontend: FrontEnd
    labels: tuple[str, ...]
    loss: str = "softmax"
    config: ml_collections.ConfigDict | None = None
    step: int | None = None

    @property
    def multi_label(self) -> bool:
        return self.loss == "sigmoid"
