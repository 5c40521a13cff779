"""Checkpoint import: HF / original AST / timm DeiT-ViT weights -> a Flax `AST` and params.

Three layouts are read (AST, arXiv 2104.01778, as its authors' code and HF transformers
store it; DeiT, arXiv 2012.12877, as timm stores it):

* HF `ASTForAudioClassification` directory (config.json + model.safetensors, sharded
  safetensors, or pytorch_model.bin). Geometry, label names (id2label) and LayerNorm eps
  (1e-12) come from config.json; the front end from preprocessor_config.json when present.
* original AST state dict (`module.v.*`, `module.mlp_head.{0,1}.*`, `module.` optional):
  size from the shapes, geometry from keyword arguments (AST defaults), LN eps 1e-6 in the
  blocks and final norm, 1e-5 in the head.
* timm DeiT / ViT state dict (`cls_token`, optional `dist_token`, `pos_embed`,
  `patch_embed.proj.weight (W, 3, 16, 16)`, `blocks.{i}.attn.qkv.*`, ...), used as ImageNet
  initialisation: the RGB kernel is summed over its input channels, the square position grid
  is adapted to the AST grid with AST's rule, and the head is fresh. A plain ViT (no
  `dist_token`) gives an AST with `dist_token=False`, pooling CLS only, which is exactly the
  model it was trained as; pass `dist_token=True` to get a DeiT-style AST whose DIST token and
  position start as copies of CLS's.

Every file goes through one path: read -> validate names and shapes in the file's own layout
(errors name the file, the key, and the expected and found shapes) -> a canonical layout
(original AST names without `module.v.`) -> Flax params -> adapted to the target model
(position grid with `posemb.resize_tokens(method="ast")`, DIST token, fresh head when the
label count differs). Parameters are numpy float32 arrays.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fast_ast_jax.audio.frontend import FrontEnd
from fast_ast_jax.bundle import Bundle
from fast_ast_jax.models import posemb
from fast_ast_jax.models.ast import AST
from fast_ast_jax.patches import check_same_patch, grid_shape, patch_field, patch_shape

log = logging.getLogger(__name__)

# Fields that fix the parameter shapes: a checkpoint and the model it is loaded into must
# agree on them (and on the patch, `check_same_patch`, which an int or a pair can spell).
ARCH_FIELDS = ("width", "depth", "num_heads", "mlp_dim")
# Original AST's defaults (arXiv 2104.01778) for the geometry of a `.pth` / timm import.
AST_GEOMETRY = dict(fstride=10, tstride=10, frames=1024, num_mel_bins=128)
HF_PREFIX = "audio_spectrogram_transformer."


@dataclasses.dataclass(frozen=True)
class _Source:
    """A checkpoint in canonical layout, before adaptation to a target model.

    canon: original-AST names without `module.v.` (`blocks.{i}.attn.qkv.weight` (3W, W),
        `patch_embed.proj.weight` (W, 1, p, p), `head_norm.*`, `head.*` when present).
    fields: AST fields the file determines (size, dist_token, eps, and for HF the geometry).
    grid: (F, T) of the position grid in the file; None when it must be inferred from the
        target's frequency grid (original AST `.pth`).
    """

    file: str
    layout: str
    canon: dict[str, np.ndarray]
    fields: dict[str, Any]
    grid: tuple[int, int] | None
    labels: tuple[str, ...] | None
    frontend: FrontEnd | None


# ----------------------------------------------------------------------------- reading


def _tensor_to_numpy(value, *, key: str, file: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value.astype(np.float32)
    if hasattr(value, "detach"):  # torch.Tensor; bf16/fp16 go through float32 first
        import torch
        return value.detach().cpu().to(torch.float32).numpy()
    raise ValueError(f"{file}: entry {key!r} is a {type(value).__name__}, not a tensor; "
                     "expected a flat state dict of weight tensors")


def _read_torch(file: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"reading {file} needs PyTorch (torch.load); install torch or "
                          "convert the file to .safetensors / .npz") from e
    obj = torch.load(file, map_location="cpu", weights_only=True)
    # Training checkpoints often nest the weights one level down.
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict):
        raise ValueError(f"{file}: expected a state dict, found a {type(obj).__name__}")
    return {k: _tensor_to_numpy(v, key=k, file=str(file)) for k, v in obj.items()}


def _read_safetensors(file: Path) -> dict[str, np.ndarray]:
    try:
        from safetensors.numpy import load_file
    except ImportError as e:
        raise ImportError(f"reading {file} needs the `safetensors` package "
                          "(pip install safetensors)") from e
    return {k: v.astype(np.float32) for k, v in load_file(str(file)).items()}


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """A weights file (.safetensors, .bin/.pth/.pt/.ckpt via torch, .npz) -> {name: float32}."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint file {file} does not exist")
    suffix = file.suffix.lower()
    if suffix == ".safetensors":
        return _read_safetensors(file)
    if suffix in (".bin", ".pth", ".pt", ".ckpt"):
        return _read_torch(file)
    if suffix == ".npz":
        with np.load(file) as data:
            return {k: data[k].astype(np.float32) for k in data.files}
    raise ValueError(f"{file}: unknown weights format {suffix!r}; use .safetensors, "
                     ".bin/.pth/.pt (PyTorch) or .npz")


def _hf_weights(directory: Path) -> tuple[dict[str, np.ndarray], str]:
    """The state dict of an HF model directory and the file name(s) it came from."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        sd: dict[str, np.ndarray] = {}
        for shard in shards:
            sd.update(read_state_dict(directory / shard))
        return sd, str(index)
    for name in ("model.safetensors", "pytorch_model.bin", "model.npz"):
        if (directory / name).is_file():
            return read_state_dict(directory / name), str(directory / name)
    raise FileNotFoundError(f"{directory} has a config.json but no weights: expected "
                            "model.safetensors, model.safetensors.index.json or "
                            "pytorch_model.bin")


# ------------------------------------------------------------------------- validation


def _check(sd: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]], *, file: str,
           ignore: tuple[str, ...] = ()) -> None:
    """Raise one ValueError listing unknown, missing and mis-shaped keys."""
    problems = []
    for key in sorted(set(sd) - set(expected)):
        if not (ignore and key.startswith(ignore)):
            problems.append(f"unknown key {key!r} {tuple(sd[key].shape)}")
    for key in sorted(set(expected) - set(sd)):
        problems.append(f"missing key {key!r} (expected shape {expected[key]})")
    for key in sorted(set(expected) & set(sd)):
        if tuple(sd[key].shape) != tuple(expected[key]):
            problems.append(f"key {key!r}: expected shape {tuple(expected[key])}, found "
                            f"{tuple(sd[key].shape)}")
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"]
                                 if len(problems) > 20 else [])
        raise ValueError(f"{file}: checkpoint does not match the expected layout:\n  "
                         + "\n  ".join(shown))


def _need(sd: dict[str, np.ndarray], key: str, *, file: str, ndim: int) -> tuple[int, ...]:
    if key not in sd:
        raise ValueError(f"{file}: missing key {key!r}, needed to infer the model size")
    shape = tuple(sd[key].shape)
    if len(shape) != ndim:
        raise ValueError(f"{file}: key {key!r}: expected a {ndim}-d array, found shape {shape}")
    return shape


def _depth(sd: dict[str, np.ndarray], pattern: str, *, file: str) -> int:
    found = {int(m.group(1)) for k in sd if (m := re.match(pattern, k))}
    if not found:
        raise ValueError(f"{file}: no transformer blocks found (keys matching {pattern!r})")
    return max(found) + 1


def _vit_spec(*, width: int, depth: int, mlp_dim: int, patch, in_chans: int,
              num_pos: int, dist: bool, prefix: str = "") -> dict[str, tuple[int, ...]]:
    """Expected shapes of a timm / original-AST ViT backbone."""
    spec = {
        "cls_token": (1, 1, width),
        "pos_embed": (1, num_pos, width),
        "patch_embed.proj.weight": (width, in_chans, *patch_shape(patch)),
        "patch_embed.proj.bias": (width,),
        "norm.weight": (width,), "norm.bias": (width,),
    }
    if dist:
        spec["dist_token"] = (1, 1, width)
    for i in range(depth):
        b = f"blocks.{i}."
        spec.update({
            b + "norm1.weight": (width,), b + "norm1.bias": (width,),
            b + "attn.qkv.weight": (3 * width, width), b + "attn.qkv.bias": (3 * width,),
            b + "attn.proj.weight": (width, width), b + "attn.proj.bias": (width,),
            b + "norm2.weight": (width,), b + "norm2.bias": (width,),
            b + "mlp.fc1.weight": (mlp_dim, width), b + "mlp.fc1.bias": (mlp_dim,),
            b + "mlp.fc2.weight": (width, mlp_dim), b + "mlp.fc2.bias": (width,),
        })
    return {prefix + k: v for k, v in spec.items()}


# ------------------------------------------------------------------------ the layouts

# transformers >= 5 names its modules differently from the checkpoints on the hub (which
# save_pretrained still writes); a state_dict() taken from a live v5 model uses these.
_HF_V5_RENAMES = (
    (r"\.layers\.(\d+)\.attention\.q_proj\.", r".encoder.layer.\1.attention.attention.query."),
    (r"\.layers\.(\d+)\.attention\.k_proj\.", r".encoder.layer.\1.attention.attention.key."),
    (r"\.layers\.(\d+)\.attention\.v_proj\.", r".encoder.layer.\1.attention.attention.value."),
    (r"\.layers\.(\d+)\.attention\.o_proj\.", r".encoder.layer.\1.attention.output.dense."),
    (r"\.layers\.(\d+)\.mlp\.fc1\.", r".encoder.layer.\1.intermediate.dense."),
    (r"\.layers\.(\d+)\.mlp\.fc2\.", r".encoder.layer.\1.output.dense."),
    (r"\.layers\.(\d+)\.", r".encoder.layer.\1."),
)


def _hf_legacy_names(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for key, value in sd.items():
        for pattern, repl in _HF_V5_RENAMES:
            key, n = re.subn(pattern, repl, key)
            if n:
                break
        out[key] = value
    return out


def _hf_spec(cfg: dict[str, Any], num_pos: int) -> dict[str, tuple[int, ...]]:
    w, m, p = cfg["hidden_size"], cfg["intermediate_size"], cfg["patch_size"]
    n_labels = len(cfg["id2label"]) if cfg.get("id2label") else cfg.get("num_labels", 2)
    e = HF_PREFIX + "embeddings."
    spec = {
        e + "cls_token": (1, 1, w), e + "distillation_token": (1, 1, w),
        e + "position_embeddings": (1, num_pos, w),
        e + "patch_embeddings.projection.weight": (w, 1, p, p),
        e + "patch_embeddings.projection.bias": (w,),
        HF_PREFIX + "layernorm.weight": (w,), HF_PREFIX + "layernorm.bias": (w,),
        "classifier.layernorm.weight": (w,), "classifier.layernorm.bias": (w,),
        "classifier.dense.weight": (n_labels, w), "classifier.dense.bias": (n_labels,),
    }
    for i in range(cfg["num_hidden_layers"]):
        b = f"{HF_PREFIX}encoder.layer.{i}."
        for name in ("attention.attention.query", "attention.attention.key",
                     "attention.attention.value", "attention.output.dense"):
            spec[f"{b}{name}.weight"], spec[f"{b}{name}.bias"] = (w, w), (w,)
        for name in ("layernorm_before", "layernorm_after"):
            spec[f"{b}{name}.weight"], spec[f"{b}{name}.bias"] = (w,), (w,)
        spec[b + "intermediate.dense.weight"], spec[b + "intermediate.dense.bias"] = (m, w), (m,)
        spec[b + "output.dense.weight"], spec[b + "output.dense.bias"] = (w, m), (w,)
    return spec


def _hf_frontend(directory: Path, cfg: dict[str, Any]) -> FrontEnd:
    pre = directory / "preprocessor_config.json"
    if not pre.is_file():
        return FrontEnd(num_mel_bins=cfg["num_mel_bins"], target_frames=cfg["max_length"])
    p = json.loads(pre.read_text())
    try:
        mean, std = (p["mean"], p["std"]) if p.get("do_normalize", True) else (0.0, 0.5)
        return FrontEnd(sample_rate=int(p["sampling_rate"]), num_mel_bins=p["num_mel_bins"],
                        target_frames=p["max_length"], mean=float(mean), std=float(std))
    except KeyError as e:
        raise ValueError(f"{pre}: missing field {e.args[0]!r}") from None


def _read_hf(directory: Path) -> _Source:
    config_file = directory / "config.json"
    cfg = json.loads(config_file.read_text())
    sd, file = _hf_weights(directory)
    sd = _hf_legacy_names(sd)
    for field in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                  "intermediate_size", "patch_size", "frequency_stride", "time_stride",
                  "max_length", "num_mel_bins"):
        if field not in cfg:
            raise ValueError(f"{config_file}: missing field {field!r}")
    if cfg.get("qkv_bias", True) is not True:
        raise ValueError(f"{config_file}: qkv_bias=false is not supported (AST uses biases)")
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"{config_file}: hidden_act={cfg['hidden_act']!r}; only exact "
                         "'gelu' is supported")
    geometry = dict(fstride=cfg["frequency_stride"], tstride=cfg["time_stride"],
                    frames=cfg["max_length"], num_mel_bins=cfg["num_mel_bins"])
    grid = grid_shape(patch_size=cfg["patch_size"], **geometry)
    _check(sd, _hf_spec(cfg, 2 + grid[0] * grid[1]), file=file)

    e = HF_PREFIX + "embeddings."
    canon = {
        "cls_token": sd[e + "cls_token"], "dist_token": sd[e + "distillation_token"],
        "pos_embed": sd[e + "position_embeddings"],
        "patch_embed.proj.weight": sd[e + "patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd[e + "patch_embeddings.projection.bias"],
        "norm.weight": sd[HF_PREFIX + "layernorm.weight"],
        "norm.bias": sd[HF_PREFIX + "layernorm.bias"],
        "head_norm.weight": sd["classifier.layernorm.weight"],
        "head_norm.bias": sd["classifier.layernorm.bias"],
        "head.weight": sd["classifier.dense.weight"], "head.bias": sd["classifier.dense.bias"],
    }
    renames = {"layernorm_before": "norm1", "attention.output.dense": "attn.proj",
               "layernorm_after": "norm2", "intermediate.dense": "mlp.fc1",
               "output.dense": "mlp.fc2"}
    for i in range(cfg["num_hidden_layers"]):
        hf, b = f"{HF_PREFIX}encoder.layer.{i}.", f"blocks.{i}."
        for p in ("weight", "bias"):
            canon[f"{b}attn.qkv.{p}"] = np.concatenate(
                [sd[f"{hf}attention.attention.{n}.{p}"] for n in ("query", "key", "value")])
            for old, new in renames.items():
                canon[f"{b}{new}.{p}"] = sd[f"{hf}{old}.{p}"]

    id2label = cfg.get("id2label") or {}
    labels = tuple(str(id2label[k]) for k in sorted(id2label, key=int)) or None
    eps = float(cfg.get("layer_norm_eps", 1e-12))
    fields = dict(width=cfg["hidden_size"], depth=cfg["num_hidden_layers"],
                  num_heads=cfg["num_attention_heads"], mlp_dim=cfg["intermediate_size"],
                  patch_size=cfg["patch_size"], dist_token=True, ln_eps=eps, head_ln_eps=eps,
                  num_classes=canon["head.weight"].shape[0], **geometry)
    return _Source(file=file, layout="hf", canon=canon, fields=fields, grid=grid,
                   labels=labels, frontend=_hf_frontend(directory, cfg))


def _vit_fields(sd: dict[str, np.ndarray], *, file: str, prefix: str,
                num_heads: int | None) -> dict[str, Any]:
    """Size of an original-AST / timm backbone from its shapes."""
    width = _need(sd, prefix + "cls_token", file=file, ndim=3)[2]
    patch = patch_field(_need(sd, prefix + "patch_embed.proj.weight", file=file, ndim=4)[2:])
    mlp_dim = _need(sd, prefix + "blocks.0.mlp.fc1.weight", file=file, ndim=2)[0]
    heads = num_heads if num_heads else max(width // 64, 1)  # DeiT/ViT: head_dim 64
    return dict(width=width, depth=_depth(sd, re.escape(prefix) + r"blocks\.(\d+)\.", file=file),
                num_heads=heads, mlp_dim=mlp_dim, patch_size=patch,
                dist_token=prefix + "dist_token" in sd)


def _read_ast(sd: dict[str, np.ndarray], *, file: str, num_heads: int | None) -> _Source:
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    fields = _vit_fields(sd, file=file, prefix="v.", num_heads=num_heads)
    w = fields["width"]
    n_labels = _need(sd, "mlp_head.1.weight", file=file, ndim=2)[0]
    spec = _vit_spec(width=w, depth=fields["depth"], mlp_dim=fields["mlp_dim"],
                     patch=fields["patch_size"], in_chans=1, dist=fields["dist_token"],
                     num_pos=_need(sd, "v.pos_embed", file=file, ndim=3)[1], prefix="v.")
    spec.update({"mlp_head.0.weight": (w,), "mlp_head.0.bias": (w,),
                 "mlp_head.1.weight": (n_labels, w), "mlp_head.1.bias": (n_labels,)})
    # The DeiT heads inside `v` are unused by AST.
    _check(sd, spec, file=file, ignore=("v.head.", "v.head_dist."))
    canon = {k.removeprefix("v."): sd[k] for k in spec if k.startswith("v.")}
    canon.update({"head_norm.weight": sd["mlp_head.0.weight"],
                  "head_norm.bias": sd["mlp_head.0.bias"],
                  "head.weight": sd["mlp_head.1.weight"], "head.bias": sd["mlp_head.1.bias"]})
    fields.update(ln_eps=1e-6, head_ln_eps=1e-5, num_classes=n_labels)
    return _Source(file=file, layout="ast", canon=canon, fields=fields, grid=None,
                   labels=None, frontend=None)


def _read_timm(sd: dict[str, np.ndarray], *, file: str, num_heads: int | None) -> _Source:
    fields = _vit_fields(sd, file=file, prefix="", num_heads=num_heads)
    in_chans = sd["patch_embed.proj.weight"].shape[1]
    num_pos = _need(sd, "pos_embed", file=file, ndim=3)[1]
    spec = _vit_spec(width=fields["width"], depth=fields["depth"], mlp_dim=fields["mlp_dim"],
                     patch=fields["patch_size"], in_chans=in_chans, num_pos=num_pos,
                     dist=fields["dist_token"])
    # ImageNet classifier heads (and timm's pre-logits layer) are replaced by a fresh head.
    _check(sd, spec, file=file, ignore=("head.", "head_dist.", "pre_logits."))
    side = math.isqrt(num_pos - (2 if fields["dist_token"] else 1))
    if side * side != num_pos - (2 if fields["dist_token"] else 1):
        raise ValueError(f"{file}: pos_embed has {num_pos} positions, which is not the class "
                         "token(s) plus a square grid; pass source_grid=(rows, cols)")
    canon = {k: sd[k] for k in spec}
    # AST's ImageNet init: sum the RGB kernel over its input channels (arXiv 2104.01778).
    canon["patch_embed.proj.weight"] = sd["patch_embed.proj.weight"].sum(1, keepdims=True)
    fields.update(ln_eps=1e-6, head_ln_eps=1e-5, num_classes=None)
    return _Source(file=file, layout="timm", canon=canon, fields=fields, grid=(side, side),
                   labels=None, frontend=None)


def _read(path: str | Path, *, num_heads: int | None) -> _Source:
    p = Path(path)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"{p} is a directory without config.json; expected an HF "
                                    "model directory (config.json + model.safetensors)")
        return _read_hf(p)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    if (p.parent / "config.json").is_file() and p.suffix in (".safetensors", ".bin"):
        return _read_hf(p.parent)
    sd = read_state_dict(p)
    keys = set(sd)
    if any(k.startswith((HF_PREFIX, "classifier.")) for k in keys):
        raise ValueError(f"{p}: HF AST weights need their config.json; load the model "
                         "directory instead of the weights file")
    if any(k.removeprefix("module.").startswith(("v.", "mlp_head.")) for k in keys):
        return _read_ast(sd, file=str(p), num_heads=num_heads)
    if "cls_token" in keys and "pos_embed" in keys:
        return _read_timm(sd, file=str(p), num_heads=num_heads)
    raise ValueError(f"{p}: unrecognised checkpoint layout (first keys: {sorted(keys)[:5]}); "
                     "expected HF ASTForAudioClassification, original AST (module.v.*) or "
                     "timm DeiT/ViT (cls_token, pos_embed, blocks.*)")


# ----------------------------------------------------------------------- to Flax params


def _ln(canon: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    return {"scale": canon[name + ".weight"], "bias": canon[name + ".bias"]}


def _dense(canon: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    return {"kernel": canon[name + ".weight"].T, "bias": canon[name + ".bias"]}


def _backbone_params(canon: dict[str, np.ndarray], *, depth: int,
                     num_heads: int) -> dict[str, Any]:
    """Canonical arrays -> the AST param tree without pos_embed / dist_token / head."""
    w = canon["cls_token"].shape[-1]
    d = w // num_heads
    params: dict[str, Any] = {
        # torch OIHW -> flax HWIO; the conv input is (B, F, T, 1) as in AST.
        "patch_embed": {"kernel": canon["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
                        "bias": canon["patch_embed.proj.bias"]},
        "cls_token": canon["cls_token"],
        "norm": _ln(canon, "norm"),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        qkv_w, qkv_b = canon[b + "attn.qkv.weight"], canon[b + "attn.qkv.bias"]
        # qkv rows are [q | k | v], each split into heads of d rows (timm's fused qkv layout).
        params[f"block_{i}"] = {
            "norm1": _ln(canon, b + "norm1"),
            "attn": {
                "qkv": {"kernel": qkv_w.T.reshape(w, 3, num_heads, d),
                        "bias": qkv_b.reshape(3, num_heads, d)},
                "out": {"kernel": canon[b + "attn.proj.weight"].T.reshape(num_heads, d, w),
                        "bias": canon[b + "attn.proj.bias"]},
            },
            "norm2": _ln(canon, b + "norm2"),
            "mlp": {"fc1": _dense(canon, b + "mlp.fc1"), "fc2": _dense(canon, b + "mlp.fc2")},
        }
    return params


def _fresh_head(*, width: int, num_classes: int, seed: int) -> dict[str, Any]:
    """head_norm + head initialised as `AST.init` does (LayerNorm 1/0, Dense defaults)."""
    x = jnp.zeros((1, width), jnp.float32)
    norm = nn.LayerNorm().init(jax.random.PRNGKey(seed), x)["params"]
    head = nn.Dense(num_classes).init(jax.random.PRNGKey(seed + 1), x)["params"]
    return jax.tree.map(lambda a: np.asarray(a, np.float32),
                        {"head_norm": norm, "head": head})


def _source_grid(src: _Source, target: AST, num_pos: int, prefix: int) -> tuple[int, int]:
    if src.grid is not None:
        return src.grid
    # Original AST: the file's frequency rows are those of the requested fstride (AST makes
    # the same assumption); the time columns follow from the number of positions.
    f_dim = target.grid()[0]
    if (num_pos - prefix) % f_dim:
        raise ValueError(f"{src.file}: pos_embed has {num_pos - prefix} patch positions, not a "
                         f"multiple of the {f_dim} frequency rows of fstride={target.fstride}; "
                         "pass the checkpoint's fstride/tstride or source_grid=(rows, cols)")
    return f_dim, (num_pos - prefix) // f_dim


def _adapt(src: _Source, target: AST, *, seed: int,
           source_grid: tuple[int, int] | None) -> dict[str, Any]:
    """Params of `src` for `target`: position grid, DIST token and head adapted."""
    check_same_patch(weights=src.fields["patch_size"], model=target.patch_size, where=src.file)
    for field in ARCH_FIELDS:
        if getattr(target, field) != src.fields[field]:
            raise ValueError(f"{src.file}: checkpoint has {field}={src.fields[field]}, the "
                             f"model has {field}={getattr(target, field)}")
    canon = src.canon
    params = _backbone_params(canon, depth=target.depth, num_heads=target.num_heads)

    src_prefix = 2 if src.fields["dist_token"] else 1
    pos = canon["pos_embed"]
    if source_grid is not None:
        src = dataclasses.replace(src, grid=tuple(source_grid))
    grid = _source_grid(src, target, pos.shape[1], src_prefix)
    if pos.shape[1] != src_prefix + grid[0] * grid[1]:
        raise ValueError(f"{src.file}: pos_embed has {pos.shape[1]} positions, expected "
                         f"{src_prefix} + {grid[0]}x{grid[1]} for grid {grid}")
    if target.dist_token and not src.fields["dist_token"]:
        # DeiT-style AST from a plain ViT: DIST starts as a copy of CLS (token and position).
        params["dist_token"] = canon["cls_token"].copy()
        pos = np.concatenate([pos[:, :1], pos[:, :1], pos[:, 1:]], axis=1)
    elif target.dist_token:
        params["dist_token"] = canon["dist_token"]
    elif src.fields["dist_token"]:
        log.info("%s: dropping the DIST token (model has dist_token=False)", src.file)
        pos = np.concatenate([pos[:, :1], pos[:, 2:]], axis=1)
    new_grid = target.grid()
    if tuple(grid) != tuple(new_grid):
        log.info("%s: adapting the position grid %s -> %s (AST's centre-cut / bilinear rule)",
                 src.file, tuple(grid), new_grid)
    params["pos_embed"] = np.asarray(posemb.resize_tokens(
        pos, old_grid=tuple(grid), new_grid=new_grid, num_prefix=target.num_prefix,
        method="ast"), np.float32)

    n_src = canon["head.weight"].shape[0] if "head.weight" in canon else None
    if n_src == target.num_classes:
        params["head_norm"] = _ln(canon, "head_norm")
        params["head"] = _dense(canon, "head")
    else:
        reason = ("the checkpoint has no audio head" if n_src is None
                  else f"the checkpoint has {n_src} classes")
        log.info("%s: fresh head for %d classes (%s)", src.file, target.num_classes, reason)
        params.update(_fresh_head(width=target.width, num_classes=target.num_classes,
                                  seed=seed))
    params = jax.tree.map(lambda a: np.ascontiguousarray(a, np.float32), params)
    _check_tree(params, target, file=src.file)
    return params


def _check_tree(params: dict[str, Any], model: AST, *, file: str) -> None:
    """The converted tree must be exactly the one `model.init` builds."""
    x = jax.ShapeDtypeStruct((1, model.frames, model.num_mel_bins), jnp.float32)
    want = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)["params"]
    def flat(tree):
        return {"/".join(str(k.key) for k in path): v
                for path, v in jax.tree_util.tree_leaves_with_path(tree)}

    want = {k: v.shape for k, v in flat(want).items()}
    got = flat(params)
    _check(got, want, file=f"{file} (converted to Flax)")


# ------------------------------------------------------------------------------- API


def _labels(src_labels: tuple[str, ...] | None, n: int, labels) -> tuple[str, ...]:
    if labels is not None:
        labels = tuple(str(x) for x in labels)
        if len(labels) != n:
            raise ValueError(f"{len(labels)} label names for a model with {n} classes")
        return labels
    if src_labels is not None and len(src_labels) == n:
        return src_labels
    return tuple(f"class_{i}" for i in range(n))


def load(path: str | Path, *, num_classes: int | None = None,
         labels: tuple[str, ...] | list[str] | None = None, frames: int | None = None,
         fstride: int | None = None, tstride: int | None = None,
         num_mel_bins: int | None = None, num_heads: int | None = None,
         dist_token: bool | None = None, source_grid: tuple[int, int] | None = None,
         frontend: FrontEnd | None = None, seed: int = 0, loss: str | None = None,
         **model_fields) -> Bundle:
    """Load an HF directory, an original AST state dict or a timm DeiT/ViT state dict.

    Args:
        path: HF model directory, or a .pth/.pt/.bin/.safetensors/.npz state dict.
        num_classes: output classes; default: the checkpoint's (len(labels) if given; 527 for
            a timm backbone). A different count gets a fresh head (logged).
        labels: class names; default: HF id2label, else "class_{i}".
        frames, fstride, tstride, num_mel_bins: the input geometry. Default: HF config.json,
            else AST's (1024 frames, stride 10/10, 128 mel bins). When the file's position
            grid differs, it is adapted with AST's rule (centre cut / bilinear, time first).
        num_heads: heads for .pth / timm files (default width // 64, as in DeiT).
        dist_token: default: whether the file has one. False drops it; True for a plain ViT
            copies CLS.
        source_grid: (rows, cols) of the file's position grid when it cannot be inferred.
        frontend: front-end settings; default: HF preprocessor_config.json, else AudioSet
            statistics with the model's mel bins and frames.
        seed: initialisation of a fresh head.
        loss: "softmax" or "sigmoid" scores (default: "sigmoid" for AudioSet's 527 classes,
            which are multi-label, else "softmax").
        **model_fields: any other `AST` field (dtype, dropout, tome_r, ...).

    Returns:
        fast_ast_jax.bundle.Bundle with model, params (numpy float32), frontend, labels
        and loss (no config or step: these are not training checkpoints).
    """
    src = _read(path, num_heads=num_heads)
    fields = dict(src.fields)
    geometry = {k: fields.pop(k, AST_GEOMETRY[k]) for k in AST_GEOMETRY}
    for k, v in dict(frames=frames, fstride=fstride, tstride=tstride,
                     num_mel_bins=num_mel_bins).items():
        if v is not None:
            geometry[k] = v
    n = num_classes or (len(labels) if labels is not None else None) or fields["num_classes"]
    fields["num_classes"] = n or 527
    if dist_token is not None:
        fields["dist_token"] = dist_token
    if "patch_size" in model_fields:
        check_same_patch(weights=fields["patch_size"], model=model_fields["patch_size"],
                         where=str(src.file))
    for k, v in model_fields.items():
        if k in ARCH_FIELDS and v != fields[k]:
            raise ValueError(f"{src.file}: checkpoint has {k}={fields[k]}, cannot set {k}={v}")
    if isinstance(model_fields.get("dtype"), str):
        model_fields["dtype"] = jnp.dtype(model_fields["dtype"])
    model = AST(**{**fields, **geometry, **model_fields})
    params = _adapt(src, model, seed=seed, source_grid=source_grid)

    if frontend is None:
        frontend = src.frontend or FrontEnd(num_mel_bins=model.num_mel_bins,
                                            target_frames=model.frames)
        if frontend.target_frames != model.frames:
            frontend = frontend.replace(target_frames=model.frames)
    if frontend.num_mel_bins != model.num_mel_bins:
        raise ValueError(f"front end has num_mel_bins={frontend.num_mel_bins}, the model "
                         f"expects {model.num_mel_bins}")
    return Bundle(model=model, params=params, frontend=frontend,
                  labels=_labels(src.labels, model.num_classes, labels),
                  loss=loss or ("sigmoid" if model.num_classes == 527 else "softmax"))


def load_into(model: AST, path: str | Path, *, source_grid: tuple[int, int] | None = None,
              seed: int = 0) -> dict[str, Any]:
    """Params for an already-configured `model` from a checkpoint (fine-tuning init).

    The checkpoint must have the model's size (width, depth, heads, MLP, patch). The position
    grid is adapted to the model's geometry, the DIST token dropped or copied from CLS, and
    the head kept when the class count matches, else freshly initialised (logged).

    Returns:
        The `model` param tree (numpy float32).
    """
    src = _read(path, num_heads=model.num_heads)
    return _adapt(src, model, seed=seed, source_grid=source_grid)
