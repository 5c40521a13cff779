"""Models: AST (with token merging and pruning), the packed ElasticAST, teachers, and the
masked autoencoder (mae.MAE) that pretrains an AST encoder without labels.

`KINDS` is the one place that names model kinds and says what differs between them:
config.model.name and the checkpoint metadata ("model_class") use its names; a model is
built from a config (`from_config`) or from a checkpoint's stored fields (`from_fields`)
through it; whether a model reads padded clips or packed rows is its entry's `packed`,
asked through `is_packed` and nowhere else; what a training step optimises is its
entry's `objective`. A new model kind is one module (a Flax module
and its `from_config`) and one entry here.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from fast_ast_jax.models import ast, cnn, elastic, mae
from fast_ast_jax.models.ast import AST, SIZES, create_ast, model_fields
from fast_ast_jax.models.cnn import CNNTeacher, create_cnn
from fast_ast_jax.models.elastic import ElasticAST


@dataclasses.dataclass(frozen=True)
class Kind:
    """One model kind.

    cls: the Flax module; a checkpoint's stored fields rebuild it as cls(**fields).
    from_config: (config, *, num_classes, frontend: audio.FrontEnd) -> model.
    packed: the model reads packed rows (data.packed; config.elastic holds their shape),
        else padded clips (x (B, frames, bins); data.pipeline).
    check_config: (config, frontend) -> None, raising ValueError("config.<field>=<value>:
        ...") for a field of this kind that cannot work, before any data is read or any
        parameter made (train.validate). None: nothing to check.
    from_ast: (model, ast_params, *, ast: AST, init) -> params: how an AST's weights (an
        AST checkpoint, or HF / .pth / timm weights through `ast.ast_twin`) initialise this
        kind (config.init_from); None: only from a checkpoint of the same kind.
    objective: what training optimises (train.step.OBJECTIVES): "classify" (logits
        against labels: cross-entropy, distillation; accuracy) or "reconstruct" (masked
        patches: mae.MAE's per-clip loss; no labels, no head).
    """

    cls: type[nn.Module]
    from_config: Callable[..., nn.Module]
    packed: bool = False
    check_config: Callable[[Any, Any], None] | None = None
    from_ast: Callable[..., dict] | None = None
    objective: str = "classify"


def _ast_as_is(model, ast_params, *, ast, init):
    return ast_params


def _elastic_from_ast(model, ast_params, *, ast, init):
    return elastic.params_from_ast(model, ast_params, ast_grid=ast.grid(),
                                   num_prefix=ast.num_prefix, init=init)


KINDS: dict[str, Kind] = {
    "ast": Kind(AST, ast.from_config, check_config=ast.check_config, from_ast=_ast_as_is),
    "elastic": Kind(ElasticAST, elastic.from_config, packed=True,
                    check_config=elastic.check_config, from_ast=_elastic_from_ast),
    "cnn": Kind(CNNTeacher, cnn.from_config),
    "mae": Kind(mae.MAE, mae.from_config, check_config=mae.check_config,
                objective="reconstruct"),
}


def config_name(config) -> str:
    """The model kind a training config names: config.model.name, a key of KINDS.

    Packed kinds read the shape of their rows from a `config.elastic` block, padded kinds
    have none. Configs written before "elastic" was a name (and checkpoints that store
    them) chose ElasticAST by that block with the default name "ast": such a config names
    "elastic". Raises ValueError("config.model.name=...") for an unknown name or a block
    that does not fit the kind.
    """
    name, block = config.model.get("name", "ast"), "elastic" in config
    if name == "ast" and block:
        return "elastic"
    if name not in KINDS:
        raise ValueError(f"config.model.name={name!r}: use one of {sorted(KINDS)}")
    if KINDS[name].packed and not block:
        raise ValueError(f"config.model.name={name!r}: a packed model needs a config.elastic "
                         "block (train.elastic.elastic_defaults())")
    if block and not KINDS[name].packed:
        why = ("; pretrain on padded clips (no config.elastic block), then init_from its "
               "workdir into the ElasticAST" if KINDS[name].objective == "reconstruct" else "")
        raise ValueError(f"config.model.name={name!r}: packed training (a config.elastic "
                         f"block) needs model.name 'elastic'{why}")
    return name


def config_kind(config) -> Kind:
    """The registry entry of a training config's model kind (`config_name`)."""
    return KINDS[config_name(config)]


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


def from_config(config, *, num_classes: int, frontend) -> nn.Module:
    """The model of a training config (`config_name`), for `num_classes` and the input of
    `frontend` (audio.FrontEnd)."""
    return config_kind(config).from_config(config, num_classes=num_classes,
                                           frontend=frontend)


def from_fields(name: str, fields: dict[str, Any]) -> nn.Module:
    """Rebuild a model from its registry name and constructor fields (checkpoint meta)."""
    if name not in KINDS:
        raise ValueError(f"unknown model class {name!r}; choose one of {sorted(KINDS)}")
    fields = dict(fields)
    if isinstance(fields.get("dtype"), str):
        fields["dtype"] = jnp.dtype(fields["dtype"])
    return KINDS[name].cls(**fields)


def name_from_meta(meta: dict[str, Any]) -> str:
    """The model kind a checkpoint's metadata names: "model_class"; older packed
    checkpoints wrote "model_kind": "elastic" instead; the oldest wrote neither (AST)."""
    return meta.get("model_class") or meta.get("model_kind") or "ast"


__all__ = ["AST", "CNNTeacher", "ElasticAST", "KINDS", "Kind", "SIZES", "config_name",
           "config_kind", "create_ast", "create_cnn", "from_config", "from_fields",
           "is_packed", "model_fields", "model_name", "name_from_meta", "objective"]
