"""Models: AST (with token merging and pruning), the packed ElasticAST, and teachers.

The registry below is the one place that names model kinds: config.model.name and the
checkpoint metadata ("model_class") use these names.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from fast_ast_jax.models.ast import AST, SIZES, create_ast, grid_shape, model_fields
from fast_ast_jax.models.cnn import CNNTeacher, create_cnn
from fast_ast_jax.models.elastic import ElasticAST

# config.model.name / checkpoint meta "model_class" -> module class.
MODEL_CLASSES: dict[str, type[nn.Module]] = {"ast": AST, "cnn": CNNTeacher,
                                             "elastic": ElasticAST}


def model_name(model: nn.Module) -> str:
    """The registry name of a model instance ("ast", "cnn" or "elastic")."""
    for name, cls in MODEL_CLASSES.items():
        if type(model) is cls:
            return name
    raise TypeError(f"{type(model).__name__} is not one of {sorted(MODEL_CLASSES)}")


def model_from_fields(name: str, fields: dict[str, Any]) -> nn.Module:
    """Rebuild a model from its registry name and constructor fields (checkpoint meta)."""
    if name not in MODEL_CLASSES:
        raise ValueError(f"unknown model class {name!r}; choose one of {sorted(MODEL_CLASSES)}")
    if name == "cnn":
        return create_cnn(**fields)
    fields = dict(fields)
    if isinstance(fields.get("dtype"), str):
        fields["dtype"] = jnp.dtype(fields["dtype"])
    return MODEL_CLASSES[name](**fields)


def name_from_meta(meta: dict[str, Any]) -> str:
    """The model kind a checkpoint's metadata names: "model_class"; older packed
    checkpoints wrote "model_kind": "elastic" instead; the oldest wrote neither (AST)."""
    return meta.get("model_class") or meta.get("model_kind") or "ast"


__all__ = ["AST", "CNNTeacher", "ElasticAST", "MODEL_CLASSES", "SIZES", "create_ast",
           "create_cnn", "grid_shape", "model_fields", "model_from_fields", "model_name",
           "name_from_meta"]
