"""Models: AST (with token merging and pruning), the packed ElasticAST, teachers, and the
masked autoencoder (mae.MAE) that pretrains an AST encoder without labels.

`KINDS` is the one place that names model kinds and says what differs between them: the
checkpoint metadata ("model_class") and training configs use its names; a model is rebuilt
from its stored constructor fields through it (`from_fields`); whether a model reads padded
clips or packed rows is its entry's `packed`, asked through `is_packed` and nowhere else;
what a training step optimises is its entry's `objective`. Models know no configs: each
module takes its constructor fields, and the training config is read into them by
fast_ast_jax.train.spec. A new model kind is one module (a Flax module) and one entry here.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from fast_ast_jax.models import elastic, mae
from fast_ast_jax.models.ast import AST, SIZES, create_ast, field_names, model_fields
from fast_ast_jax.models.cnn import CNNTeacher, create_cnn
from fast_ast_jax.models.elastic import ElasticAST
from fast_ast_jax.patches import patch_field


@dataclasses.dataclass(frozen=True)
class Kind:
    """One model kind.

    cls: the Flax module; constructor fields rebuild it (`from_fields`).
    packed: the model reads packed rows (data.packed), else padded clips
        (x (B, frames, bins); data.pipeline).
    from_ast: (model, ast_params, *, ast: AST, init) -> params: how an AST's weights (an
        AST checkpoint, or HF / .pth / timm weights through `ast.ast_twin`) initialise this
        kind; None: only from a checkpoint of the same kind.
    objective: what training optimises (train.step.OBJECTIVES): "classify" (logits
        against labels: cross-entropy, distillation; accuracy) or "reconstruct" (masked
        patches: mae.MAE's per-clip loss; no labels, no head).
    """

    cls: type[nn.Module]
    packed: bool = False
    from_ast: Callable[..., dict] | None = None
    objective: str = "classify"


def _ast_as_is(model, ast_params, *, ast, init):
    return ast_params


def _elastic_from_ast(model, ast_params, *, ast, init):
    return elastic.params_from_ast(model, ast_params, ast_grid=ast.grid(),
                                   num_prefix=ast.num_prefix, init=init)


KINDS: dict[str, Kind] = {
    "ast": Kind(AST, from_ast=_ast_as_is),
    "elastic": Kind(ElasticAST, packed=True, from_ast=_elastic_from_ast),
    "cnn": Kind(CNNTeacher),
    "mae": Kind(mae.MAE, objective="reconstruct"),
}


def model_name(model: nn.Module) -> str:
    """The registry name of a model instance ("ast", "cnn", "elastic", ...)."""
    for name, entry in KINDS.items():
        if type(model) is entry.cls:
            return name
    raise TypeError(f"{type(model).__name__} is not one of {sorted(KINDS)}")


def objective(model: nn.Module) -> str:
    """What training `model` optimises: its entry's `objective` ("classify" or
    "reconstruct")."""
    return KINDS[model_name(model)].objective


def is_packed(model: nn.Module) -> bool:
    """Whether `model` reads packed rows (else padded clips): the one padded/packed switch."""
    return KINDS[model_name(model)].packed


def from_fields(name: str, fields: dict[str, Any]) -> nn.Module:
    """A model from its registry name and constructor fields, in the forms checkpoints
    store them (a dtype by name; a patch as `patches.patch_field` keeps it)."""
    if name not in KINDS:
        raise ValueError(f"unknown model class {name!r}; choose one of {sorted(KINDS)}")
    fields = dict(fields)
    if isinstance(fields.get("dtype"), str):
        fields["dtype"] = jnp.dtype(fields["dtype"])
    if "patch_size" in fields:
        fields["patch_size"] = patch_field(fields["patch_size"])
    return KINDS[name].cls(**fields)


def name_from_meta(meta: dict[str, Any]) -> str:
    """The model kind a checkpoint's metadata names: "model_class"; older packed
    checkpoints wrote "model_kind": "elastic" instead; the oldest wrote neither (AST)."""
    return meta.get("model_class") or meta.get("model_kind") or "ast"


__all__ = ["AST", "CNNTeacher", "ElasticAST", "KINDS", "Kind", "SIZES", "create_ast",
           "create_cnn", "field_names", "from_fields", "is_packed", "model_fields",
           "model_name", "name_from_meta", "objective"]
