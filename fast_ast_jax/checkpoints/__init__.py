"""Load any checkpoint for inference or as initial weights: one loader, one `Bundle`.

    load(path)  -> Bundle   a training workdir / checkpoints dir of any model kind (AST,
                            CNN teacher, ElasticAST, MAE), or imported weights (HF directory,
                            original AST .pth, timm DeiT/ViT: fast_ast_jax.convert)
    load_classifier(path) -> Bundle   `load`, refusing a checkpoint without a classifier
    init_params(path, model, fresh=..., seed=...)   config.init_from for any model kind

Reading never creates anything: a mistyped path is a FileNotFoundError naming it, and the
directory is left as it was. This package (with the writer/reader, store.py) sits below
the training loop (train/loop.py), `predict`, `evaluate.py` and `distill dump`, which all
load through it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from fast_ast_jax import convert, models
from fast_ast_jax.audio.frontend import FrontEnd
from fast_ast_jax.bundle import Bundle
from fast_ast_jax.checkpoints.store import Checkpointer, check_shapes, model_fields_from_meta
from fast_ast_jax.models import mae as mae_lib, posemb
from fast_ast_jax.models.ast import AST, ast_twin
from fast_ast_jax.patches import check_same_patch


def checkpoint_dir(path: str | Path) -> Path:
    """A workdir (holding checkpoints/) or the checkpoints directory itself."""
    path = Path(path)
    return path / "checkpoints" if (path / "checkpoints").is_dir() else path


def saved_steps(path: str | Path) -> list[int]:
    """The steps saved in a training workdir or checkpoints dir (its numeric step dirs),
    ascending; [] when there are none (or no such directory)."""
    path = checkpoint_dir(path)
    return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit() and p.is_dir()) \
        if path.is_dir() else []


def is_checkpoint_dir(path: str | Path) -> bool:
    """Whether `path` is a training workdir or checkpoints dir (numeric step dirs)."""
    return bool(saved_steps(path))


def _is_imported(path: Path) -> bool:
    """An HF model directory or a weights file that fast_ast_jax.convert reads."""
    return (path.is_dir() and (path / "config.json").is_file()) or (
        path.is_file() and path.suffix.lower() in (".safetensors", ".bin", ".pth", ".pt",
                                                   ".ckpt", ".npz"))


def load(path: str | Path, *, step: int | None = None) -> Bundle:
    """The model, params (on the host, as saved), front-end and labels of a checkpoint.

    Args:
        path: a training workdir or its checkpoints/ directory (any model kind), or an HF
            directory / AST or timm weights file (fast_ast_jax.convert.load defaults).
        step: a training step to read (default: the latest readable one; an unreadable
            newer one is skipped with a warning naming it).
    Raises:
        FileNotFoundError: no such path, or no checkpoint in it.
        fast_ast_jax.checkpoints.store.CheckpointError: no readable step.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass a training workdir, "
                                "its checkpoints/ directory, or an HF / .pth weights path")
    if not is_checkpoint_dir(path):
        if _is_imported(path):
            return convert.load(path)
        raise FileNotFoundError(f"no checkpoint in {path}: expected a training workdir "
                                "(checkpoints/<step>/), or an HF / .pth weights path")
    ckpt = Checkpointer(checkpoint_dir(path), create=False)
    try:
        state, meta = ckpt.restore(step, fallback=step is None)
        step = ckpt.restored_step
    finally:
        ckpt.close()
    model = models.from_fields(models.name_from_meta(meta), model_fields_from_meta(meta))
    return Bundle(model=model, params=state["params"],
                  frontend=FrontEnd.from_dict(meta["frontend"]),
                  labels=tuple(str(label) for label in meta["labels"]), loss=meta["loss"],
                  config=ml_collections.ConfigDict(meta["config"]), step=int(step))


def load_classifier(path: str | Path) -> Bundle:
    """`load` for what needs class scores (predict, evaluate, distill dump, export): a
    masked-pretraining (mae) checkpoint has no classifier head and is a one-line error."""
    bundle = load(path)
    if models.objective(bundle.model) != "classify":
        raise ValueError(f"{path} holds a masked-pretraining ({models.model_name(bundle.model)}"
                         ") checkpoint, which has no classifier head: fine-tune it first "
                         f"(train.py --config.init_from={path}), or take its embeddings "
                         "(python -m fast_ast_jax.embed, or export them: python -m "
                         "fast_ast_jax.export --embed)")
    return bundle


def _from_mae(saved: Bundle, model, *, fresh: dict[str, Any], where: str) -> dict[str, Any]:
    """`model`'s initial params from a masked-pretraining checkpoint: the encoder (not the
    decoder) as an AST's weights, its position table resized to `model`'s grid, a fresh
    head; an ElasticAST (or another kind with `from_ast`) converts them as it converts an
    AST's."""
    from_ast = models.KINDS[models.model_name(model)].from_ast
    if from_ast is None:
        raise ValueError(f"{where} is a masked-pretraining (mae) checkpoint, whose encoder "
                         f"initialises an AST-family model (ast, elastic), not a "
                         f"{type(model).__name__}")
    mae = saved.model
    ast = AST(**mae.backbone_fields(), num_classes=1)  # the encoder as the AST it is
    params = mae_lib.encoder_params(saved.params)
    if isinstance(model, AST):  # the grid of the AST being trained, and its fresh head
        grid = model.grid()
        params["pos_embed"] = posemb.resize_tokens(
            np.asarray(params["pos_embed"]), old_grid=ast.grid(), new_grid=grid,
            num_prefix=ast.num_prefix, method="ast")
        ast = ast.clone(frames=model.frames, num_mel_bins=model.num_mel_bins)
        params.update(head_norm=fresh["head_norm"], head=fresh["head"])
    params = from_ast(model, params, ast=ast, init=fresh)
    check_shapes(params, fresh, where=where, exact=True)
    return params


def init_params(path: str | Path, model, *, fresh: dict[str, Any], seed: int = 0
                ) -> dict[str, Any]:
    """Initial weights for `model` (config.init_from), any model kind.

    From a training checkpoint of the same kind and size: its params (a fresh head when the
    class count differs; a larger model's checkpoint is an error). From a masked-
    pretraining (mae) checkpoint into an AST-family model: its encoder, the decoder
    dropped, the head fresh (`_from_mae`). From an AST training
    checkpoint into an ElasticAST: converted by `params_from_ast` (shared blocks and head,
    position table adapted). From HF / .pth / timm weights (fast_ast_jax.convert): adapted
    to an AST's position grid, or to an ElasticAST through its AST twin.

    Args:
        path: training workdir / checkpoints dir, or an HF dir / weights file.
        model: the model being trained (AST, ElasticAST or CNNTeacher).
        fresh: `model`'s freshly initialised params (shapes to check against, the head,
            and what an AST lacks for an ElasticAST).
        seed: initialisation of a fresh head for imported weights.
    """
    where = f"config.init_from {path}"
    name = models.model_name(model)
    from_ast = models.KINDS[name].from_ast
    if is_checkpoint_dir(path):
        saved = load(path)
        params = dict(saved.params)
        saved_name = models.model_name(saved.model)
        if hasattr(saved.model, "patch_size") and hasattr(model, "patch_size"):
            check_same_patch(weights=saved.model.patch_size, model=model.patch_size,
                             where=where)
        if saved_name == "mae" and name != "mae":
            return _from_mae(saved, model, fresh=fresh, where=where)
        if saved_name != name and saved_name == "ast" and from_ast is not None:
            return from_ast(model, params, ast=saved.model, init=fresh)
        if saved_name != name:
            raise ValueError(f"{where} holds a {type(saved.model).__name__} checkpoint, which "
                             f"cannot initialise the {type(model).__name__} being trained; use "
                             "one of the same model kind (or an AST one for an ElasticAST)")
        if "head" in fresh and params["head"]["kernel"].shape != fresh["head"]["kernel"].shape:
            params["head"] = fresh["head"]  # another label set: new classifier
        check_shapes(params, fresh, where=f"{where} ({checkpoint_dir(path)})", exact=True)
        return params
    if from_ast is None:
        raise ValueError(f"{where} is AST weights (HF / .pth / timm); a "
                         f"{type(model).__name__} can only start from a training checkpoint "
                         "of its own kind")
    twin = ast_twin(model)
    return from_ast(model, convert.load_into(twin, path, seed=seed), ast=twin, init=fresh)
