"""Checkpoint import: numerical parity with PyTorch HF AST, original-AST and timm layouts.

The references are randomly initialised `transformers.ASTForAudioClassification` models
(no downloads). Every parameter is perturbed with noise so that a wrongly mapped tensor
(e.g. a LayerNorm left at 1/0, a transposed kernel) changes the logits.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import jax
import numpy as np
import pytest

from fast_ast_jax import convert
from fast_ast_jax.patches import grid_shape

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
F = torch.nn.functional
load_file = pytest.importorskip("safetensors.torch").load_file

TOL = 1e-4


def _hf_model(*, seed: int = 0, **config):
    """A random HF AST in eval mode with every parameter perturbed."""
    torch.manual_seed(seed)
    cfg = transformers.ASTConfig(**config)
    model = transformers.ASTForAudioClassification(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _hf_logits(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).logits.numpy()


def _logits(bundle, x: np.ndarray) -> np.ndarray:
    return np.asarray(jax.jit(bundle.model.apply)({"params": bundle.params}, x))


def _input(cfg: dict, batch: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (batch, cfg.get("max_length", 1024), cfg.get("num_mel_bins", 128))
    return rng.standard_normal(shape).astype(np.float32)


def _legacy_state_dict(model) -> dict:
    """The hub (legacy) names of a transformers-5 model's state dict."""
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        return load_file(str(Path(d) / "model.safetensors"))


def _save_bin(directory) -> None:
    """pytorch_model.bin with the hub's (legacy) names, as older transformers wrote it."""
    sd = load_file(str(directory / "model.safetensors"))
    (directory / "model.safetensors").unlink()
    torch.save(sd, directory / "pytorch_model.bin")


SMALL = [
    dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
         frequency_stride=12, time_stride=12, max_length=128, num_labels=10),
    dict(hidden_size=192, num_hidden_layers=3, num_attention_heads=3, intermediate_size=384,
         frequency_stride=16, time_stride=16, max_length=256, num_labels=35),
    dict(hidden_size=96, num_hidden_layers=4, num_attention_heads=4, intermediate_size=192,
         frequency_stride=10, time_stride=14, max_length=160, num_mel_bins=64, num_labels=7),
]


@pytest.mark.parametrize("cfg,fmt", [(SMALL[0], "bin"), (SMALL[0], "safetensors"),
                                     (SMALL[1], "safetensors"), (SMALL[2], "safetensors")],
                         ids=["w64-t128-bin", "w64-t128", "w192-t256", "w96-t160-mel64"])
def test_hf_parity_small(tmp_path, cfg, fmt):
    hf = _hf_model(**cfg)
    hf.config.id2label = {i: f"label {i}" for i in range(cfg["num_labels"])}
    hf.save_pretrained(tmp_path)
    if fmt == "bin":
        _save_bin(tmp_path)
    bundle = convert.load(tmp_path)
    m = bundle.model
    assert (m.width, m.depth, m.num_heads, m.mlp_dim) == (
        cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"],
        cfg["intermediate_size"])
    assert (m.fstride, m.tstride, m.frames) == (
        cfg["frequency_stride"], cfg["time_stride"], cfg["max_length"])
    assert m.ln_eps == m.head_ln_eps == 1e-12 and m.dist_token
    assert bundle.labels == tuple(f"label {i}" for i in range(cfg["num_labels"]))
    assert bundle.frontend.target_frames == cfg["max_length"]
    assert bundle.frontend.num_mel_bins == cfg.get("num_mel_bins", 128)
    for leaf in jax.tree.leaves(bundle.params):
        assert type(leaf) is np.ndarray and leaf.dtype == np.float32
    x = _input(cfg, batch=2)
    diff = np.abs(_logits(bundle, x) - _hf_logits(hf, x)).max()
    print(f"HF parity {fmt} {cfg}: max abs diff {diff:.3g}")
    assert diff <= TOL


@pytest.mark.slow
def test_hf_parity_base(tmp_path):
    """The default HF config: base, 1024 frames, stride 10/10, 527 labels."""
    hf = _hf_model(num_labels=527)
    hf.save_pretrained(tmp_path)
    bundle = convert.load(tmp_path)
    assert bundle.model.grid() == (12, 101) and bundle.model.num_classes == 527
    x = _input({}, batch=1)
    diff = np.abs(_logits(bundle, x) - _hf_logits(hf, x)).max()
    print(f"HF parity base (1024 frames, 10/10, 527): max abs diff {diff:.3g}")
    assert diff <= TOL


def test_hf_frontend_from_preprocessor_config(tmp_path):
    cfg = SMALL[0]
    _hf_model(**cfg).save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(dict(
        feature_size=1, sampling_rate=16000, num_mel_bins=128, max_length=128,
        do_normalize=True, mean=-6.845978, std=5.5654526)))
    fe = convert.load(tmp_path).frontend
    assert (fe.mean, fe.std, fe.target_frames, fe.sample_rate) == (
        -6.845978, 5.5654526, 128, 16000)


def test_hf_v5_state_dict_names(tmp_path):
    """A state_dict() of a live transformers-5 model (q_proj/o_proj/mlp names) loads too."""
    cfg = SMALL[0]
    hf = _hf_model(**cfg)
    hf.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    x = _input(cfg, batch=1)
    diff = np.abs(_logits(convert.load(tmp_path), x) - _hf_logits(hf, x)).max()
    assert diff <= TOL


# ------------------------------------------------------------------- original AST layout


def _to_original(sd: dict, *, module_prefix: bool) -> dict:
    """HF names -> original AST names (inverse of HF's conversion script, reference §4.3)."""
    pre = "audio_spectrogram_transformer."
    out = {}
    renames = {"layernorm_before": "norm1", "attention.output.dense": "attn.proj",
               "layernorm_after": "norm2", "intermediate.dense": "mlp.fc1",
               "output.dense": "mlp.fc2"}
    layers = {int(k.split(".")[3]) for k in sd if ".encoder.layer." in k}
    for i in layers:
        hf, b = f"{pre}encoder.layer.{i}.", f"v.blocks.{i}."
        for p in ("weight", "bias"):
            out[f"{b}attn.qkv.{p}"] = torch.cat(
                [sd[f"{hf}attention.attention.{n}.{p}"] for n in ("query", "key", "value")])
            for old, new in renames.items():
                out[f"{b}{new}.{p}"] = sd[f"{hf}{old}.{p}"]
    e = pre + "embeddings."
    out.update({
        "v.cls_token": sd[e + "cls_token"], "v.dist_token": sd[e + "distillation_token"],
        "v.pos_embed": sd[e + "position_embeddings"],
        "v.patch_embed.proj.weight": sd[e + "patch_embeddings.projection.weight"],
        "v.patch_embed.proj.bias": sd[e + "patch_embeddings.projection.bias"],
        "v.norm.weight": sd[pre + "layernorm.weight"], "v.norm.bias": sd[pre + "layernorm.bias"],
        "mlp_head.0.weight": sd["classifier.layernorm.weight"],
        "mlp_head.0.bias": sd["classifier.layernorm.bias"],
        "mlp_head.1.weight": sd["classifier.dense.weight"],
        "mlp_head.1.bias": sd["classifier.dense.bias"],
    })
    w = sd[e + "cls_token"].shape[-1]
    # The DeiT heads the original checkpoints carry (unused by AST).
    out["v.head.weight"], out["v.head.bias"] = torch.zeros(1000, w), torch.zeros(1000)
    out["v.head_dist.weight"], out["v.head_dist.bias"] = torch.zeros(1000, w), torch.zeros(1000)
    if module_prefix:
        out = {"module." + k: v for k, v in out.items()}
    return out


ORIG_CFG = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=256, max_length=256, num_labels=12, layer_norm_eps=1e-6)


@pytest.fixture(scope="module")
def original_ckpt(tmp_path_factory):
    """(HF model matching original AST numerics, path of its original-layout .pth)."""
    hf = _hf_model(seed=3, **ORIG_CFG)
    # Original AST: 1e-6 in blocks and the final norm (the config above), 1e-5 in the
    # head's LayerNorm (PyTorch default). Setting it on the torch module makes the HF model
    # compute exactly what the original AST computes.
    hf.classifier.layernorm.eps = 1e-5
    path = tmp_path_factory.mktemp("orig") / "ast.pth"
    torch.save(_to_original(_legacy_state_dict(hf), module_prefix=True), path)
    return hf, path




@pytest.mark.parametrize("module_prefix", [True, False])
def test_original_ast_parity(tmp_path, original_ckpt, module_prefix):
    hf, path = original_ckpt
    if not module_prefix:
        sd = torch.load(path, weights_only=True)
        path = tmp_path / "noprefix.pth"
        torch.save({k.removeprefix("module."): v for k, v in sd.items()}, path)
    bundle = convert.load(path, frames=ORIG_CFG["max_length"])
    m = bundle.model
    assert (m.ln_eps, m.head_ln_eps, m.num_classes, m.grid()) == (1e-6, 1e-5, 12, (12, 25))
    assert bundle.labels == tuple(f"class_{i}" for i in range(12))
    x = _input(ORIG_CFG, batch=2)
    diff = np.abs(_logits(bundle, x) - _hf_logits(hf, x)).max()
    print(f"original-AST parity (prefix={module_prefix}): max abs diff {diff:.3g}")
    assert diff <= TOL


def test_npz_and_dtype(tmp_path, original_ckpt):
    """.npz state dicts load like .pth; `dtype` and other AST fields pass through."""
    _, path = original_ckpt
    sd = torch.load(path, weights_only=True)
    np.savez(tmp_path / "ast.npz", **{k: v.numpy() for k, v in sd.items()})
    a = convert.load(path, frames=256)
    b = convert.load(tmp_path / "ast.npz", frames=256, dtype="bfloat16", dropout=0.1)
    assert b.model.dtype == np.dtype("bfloat16") and b.model.dropout == 0.1
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)


def _ast_rule(pos: torch.Tensor, *, new_grid, prefix: int, old_grid) -> np.ndarray:
    """AST's position adaptation as ast_models.py writes it (cut from the middle, else
    F.interpolate bilinear; time axis first, then frequency)."""
    (f0, t0), (f1, t1) = old_grid, new_grid
    w = pos.shape[-1]
    grid = pos[:, prefix:].reshape(1, f0, t0, w).permute(0, 3, 1, 2)  # (1, W, F, T)
    if t1 <= t0:
        grid = grid[:, :, :, t0 // 2 - t1 // 2: t0 // 2 - t1 // 2 + t1]
    else:
        grid = F.interpolate(grid, size=(f0, t1), mode="bilinear", align_corners=False)
    if f1 <= f0:
        grid = grid[:, :, f0 // 2 - f1 // 2: f0 // 2 - f1 // 2 + f1, :]
    else:
        grid = F.interpolate(grid, size=(f1, t1), mode="bilinear", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, f1 * t1, w)
    return torch.cat([pos[:, :prefix], grid], dim=1).numpy()


@pytest.mark.parametrize("frames", [128, 512])
def test_original_ast_grid_adaptation(original_ckpt, frames):
    """A 256-frame (12x25) checkpoint used at 128 (centre cut) and 512 frames (bilinear)."""
    _, path = original_ckpt
    bundle = convert.load(path, frames=frames)
    new_grid = grid_shape(frames=frames, num_mel_bins=128, patch_size=16, fstride=10,
                          tstride=10)
    assert bundle.model.grid() == new_grid and bundle.frontend.target_frames == frames
    pos = torch.load(path, weights_only=True)["module.v.pos_embed"]
    want = _ast_rule(pos, new_grid=new_grid, prefix=2, old_grid=(12, 25))
    np.testing.assert_allclose(bundle.params["pos_embed"], want, atol=1e-5, rtol=0)
    out = _logits(bundle, np.zeros((1, frames, 128), np.float32))
    assert out.shape == (1, 12) and np.isfinite(out).all()


@pytest.mark.slow
def test_load_into_new_head(original_ckpt, caplog):
    """Fine-tuning init: same backbone, another class count -> fresh head (logged)."""
    _, path = original_ckpt
    ref = convert.load(path, frames=256)
    model = ref.model.clone(num_classes=5, frames=128)
    with caplog.at_level("INFO", logger="fast_ast_jax.convert"):
        params = convert.load_into(model, path)
    assert "fresh head for 5 classes" in caplog.text
    assert params["head"]["kernel"].shape == (128, 5)
    np.testing.assert_array_equal(params["head_norm"]["scale"], np.ones(128, np.float32))
    np.testing.assert_array_equal(params["block_1"]["mlp"]["fc2"]["kernel"],
                                  ref.params["block_1"]["mlp"]["fc2"]["kernel"])
    out = jax.jit(model.apply)({"params": params}, np.zeros((2, 128, 128), np.float32))
    assert out.shape == (2, 5)
    bundle = convert.load(path, frames=256, labels=["a", "b", "c"])
    assert bundle.model.num_classes == 3 and bundle.labels == ("a", "b", "c")


# --------------------------------------------------------------------------- timm layout


def _to_timm(hf, *, grid: int, dist: bool, seed: int = 7) -> tuple[dict, torch.Tensor]:
    """HF weights -> timm DeiT/ViT names, a 3-channel kernel and a square position grid."""
    sd = _to_original(_legacy_state_dict(hf), module_prefix=False)
    out = {k.removeprefix("v."): v for k, v in sd.items() if k.startswith("v.")}
    w1 = out["patch_embed.proj.weight"]
    # Three unequal parts that sum to the 1-channel kernel (AST sums over RGB).
    parts = torch.stack([0.5 * w1, 0.2 * w1, w1 - 0.5 * w1 - 0.2 * w1], dim=1)[:, :, 0]
    out["patch_embed.proj.weight"] = parts
    prefix = 2 if dist else 1
    gen = torch.Generator().manual_seed(seed)
    out["pos_embed"] = torch.randn(1, prefix + grid * grid, w1.shape[0], generator=gen)
    out["head.weight"], out["head.bias"] = torch.zeros(1000, w1.shape[0]), torch.zeros(1000)
    if not dist:
        for k in ("dist_token", "head_dist.weight", "head_dist.bias"):
            out.pop(k)
    return out, w1


# (12, 25) from a 16x16 grid: frequency cut, time interpolated; (7, 7) from 6x6: both
# interpolated.
@pytest.mark.parametrize("frames,stride,grid", [(256, 10, 16), (128, 16, 6)])
def test_timm_deit_import(tmp_path, frames, stride, grid):
    hf = _hf_model(seed=5, **ORIG_CFG)
    sd, w1 = _to_timm(hf, grid=grid, dist=True)
    path = tmp_path / "deit.pth"
    torch.save(sd, path)
    bundle = convert.load(path, frames=frames, fstride=stride, tstride=stride, num_classes=4)
    p = bundle.params
    # Kernel: summed over RGB, OIHW -> HWIO.
    np.testing.assert_allclose(p["patch_embed"]["kernel"],
                               w1.numpy().transpose(2, 3, 1, 0), atol=1e-6, rtol=0)
    new_grid = bundle.model.grid()
    want = _ast_rule(sd["pos_embed"], new_grid=new_grid, prefix=2, old_grid=(grid, grid))
    np.testing.assert_allclose(p["pos_embed"], want, atol=1e-5, rtol=0)
    # Fresh head, initialised like AST.init (LayerNorm 1/0, Dense bias 0).
    assert p["head"]["kernel"].shape == (128, 4)
    np.testing.assert_array_equal(p["head"]["bias"], np.zeros(4, np.float32))
    np.testing.assert_array_equal(p["head_norm"]["scale"], np.ones(128, np.float32))
    x = np.random.default_rng(0).standard_normal((2, frames, 128)).astype(np.float32)
    out = _logits(bundle, x)
    assert out.shape == (2, 4) and np.isfinite(out).all()


def test_timm_backbone_parity(tmp_path):
    """When the square grid is the AST grid, the timm import reproduces the HF backbone: with
    the HF head grafted on, logits equal the HF model's."""
    cfg = dict(ORIG_CFG, num_mel_bins=64, max_length=64, frequency_stride=16, time_stride=16)
    hf = _hf_model(seed=9, **cfg)  # grid (4, 4)
    hf.classifier.layernorm.eps = 1e-5
    sd, _ = _to_timm(hf, grid=4, dist=True)
    sd["pos_embed"] = _legacy_state_dict(hf)[
        "audio_spectrogram_transformer.embeddings.position_embeddings"]
    torch.save(sd, tmp_path / "deit.pth")
    bundle = convert.load(tmp_path / "deit.pth", frames=64, num_mel_bins=64, fstride=16,
                          tstride=16, num_classes=12)
    head = convert.load_into(bundle.model, _save_original(hf, tmp_path))
    params = dict(bundle.params, head=head["head"], head_norm=head["head_norm"])
    x = _input(cfg, batch=2)
    out = np.asarray(jax.jit(bundle.model.apply)({"params": params}, x))
    diff = np.abs(out - _hf_logits(hf, x)).max()
    print(f"timm backbone parity: max abs diff {diff:.3g}")
    assert diff <= TOL


def _save_original(hf, tmp_path):
    path = tmp_path / "orig.pth"
    torch.save(_to_original(_legacy_state_dict(hf), module_prefix=True), path)
    return path


@pytest.mark.parametrize("dist_token", [None, True])
def test_timm_plain_vit(tmp_path, dist_token):
    """A plain ViT (no dist_token): AST with CLS only by default, or DIST copied from CLS."""
    hf = _hf_model(seed=6, **ORIG_CFG)
    sd, _ = _to_timm(hf, grid=8, dist=False)
    torch.save(sd, tmp_path / "vit.pth")
    bundle = convert.load(tmp_path / "vit.pth", frames=128, num_classes=3,
                          dist_token=dist_token)
    p = bundle.params
    if dist_token:
        assert bundle.model.dist_token
        np.testing.assert_array_equal(p["dist_token"], p["cls_token"])
        np.testing.assert_array_equal(p["pos_embed"][:, 1], p["pos_embed"][:, 0])
    else:
        assert not bundle.model.dist_token and "dist_token" not in p
        assert p["pos_embed"].shape == (1, 1 + 12 * 12, 128)
    out = _logits(bundle, np.ones((1, 128, 128), np.float32))
    assert out.shape == (1, 3) and np.isfinite(out).all()


# ---------------------------------------------------------------------------- errors


def test_error_unknown_key(tmp_path, original_ckpt):
    _, path = original_ckpt
    sd = torch.load(path, weights_only=True)
    sd["module.v.blocks.0.attn.extra"] = torch.zeros(3)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"bad\.pth.*\n.*unknown key "
                                         r"'v\.blocks\.0\.attn\.extra' \(3,\)"):
        convert.load(tmp_path / "bad.pth", frames=256)


def test_error_wrong_shape(tmp_path, original_ckpt):
    _, path = original_ckpt
    sd = torch.load(path, weights_only=True)
    sd["module.v.blocks.1.mlp.fc1.weight"] = torch.zeros(100, 128)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as e:
        convert.load(tmp_path / "bad.pth", frames=256)
    msg = str(e.value)
    assert "bad.pth" in msg and "'v.blocks.1.mlp.fc1.weight'" in msg
    assert "expected shape (256, 128), found (100, 128)" in msg


def test_error_hf_wrong_shape_and_missing(tmp_path):
    hf = _hf_model(**SMALL[0])
    hf.save_pretrained(tmp_path)
    sd = _legacy_state_dict(hf)
    sd["classifier.dense.weight"] = torch.zeros(11, 64)
    del sd["audio_spectrogram_transformer.layernorm.bias"]
    (tmp_path / "model.safetensors").unlink()
    torch.save(sd, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError) as e:
        convert.load(tmp_path)
    msg = str(e.value)
    assert "pytorch_model.bin" in msg
    assert "'classifier.dense.weight': expected shape (10, 64), found (11, 64)" in msg
    assert "missing key 'audio_spectrogram_transformer.layernorm.bias'" in msg


def test_error_missing_file_and_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        convert.load(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="without config.json"):
        convert.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(transformers.ASTConfig().to_dict()))
    with pytest.raises(FileNotFoundError, match="no weights"):
        convert.load(tmp_path)
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(ValueError, match="unknown weights format"):
        convert.read_state_dict(tmp_path / "w.txt")


def test_error_architecture_mismatch(original_ckpt):
    _, path = original_ckpt
    model = convert.load(path, frames=256).model.clone(mlp_dim=512)
    with pytest.raises(ValueError, match="checkpoint has mlp_dim=256, the model has "
                                         "mlp_dim=512"):
        convert.load_into(model, path)


def test_error_patch_mismatch_names_both_patches(original_ckpt):
    """16x16 pretrained weights do not fit another patch: one line naming both, whether the
    model is given (load_into, init_from) or the patch is asked of load."""
    _, path = original_ckpt
    frames = convert.load(path, frames=256).model.clone(patch_size=(128, 2), fstride=128,
                                                        tstride=2)
    for fn in (lambda: convert.load_into(frames, path),
               lambda: convert.load(path, frames=256, patch_size=(128, 2), fstride=128,
                                    tstride=2)):
        with pytest.raises(ValueError, match=r"holds weights for 16x16 patches, the model "
                                             r"has 128x2 patches \(patch_size=\(128, 2\)\); "
                                             r"use patch_size=16") as e:
            fn()
        assert "\n" not in str(e.value)
    # the same patch spelt as a pair is the same patch
    assert convert.load(path, frames=256, patch_size=(16, 16)).model.grid() == (12, 25)
