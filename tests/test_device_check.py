"""benchmarks/device_check.py: the smoke mode runs every path on CPU (so the GPU check does
not rot between GPU sessions), and the per-block kernel choice for the GPU settings."""
from __future__ import annotations

import math

import pytest

from benchmarks import device_check
from fast_ast_jax import bench


@pytest.mark.slow
def test_smoke_runs_every_section(tmp_path, capsys):
    out = tmp_path / "check.md"
    result = device_check.main(["--smoke", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "cuDNN attention skipped: backend is cpu" in printed
    assert result["candidate"] == "chunked"  # stands in for cuDNN on CPU
    numerics = result["numerics"]
    assert [n["case"].split(" (")[0].split(",")[0] for n in numerics] == [
            "attention"] * 3 + ["logits"] * 3
    for n in numerics:
        # bf16 tiled vs bf16 plain: a few bf16 ulps; bf16 vs float32: under 2%.
        assert n["max abs(chunked - xla) out"] < 0.05, n
        assert n["rel err chunked vs f32"] < 2e-2 and n["rel err xla bf16 vs f32"] < 2e-2, n
        assert math.isnan(n["max abs(chunked - xla) dq"]) or (
                n["max abs(chunked - xla) dq"] < 0.05), n
    rows = result["rows"]
    train = [r for r in rows if r["table"] == "train"]
    forward = [r for r in rows if r["table"] == "forward"]
    packed = [r for r in rows if r["table"] == "packed"]
    assert [r["setting"] for r in train] == ["baseline", "ToMe r=8", "TopK keep=0.7"]
    assert [r["setting"] for r in forward] == [r["setting"] for r in train]
    assert len(packed) == 2 and packed[0]["setting"].startswith("ElasticAST")
    assert all(r["clips/s"] > 0 for r in rows)
    assert all(r["GMACs/clip (fwd)"] > 0 for r in train + forward)
    assert all(r["MFU"] is None for r in train + forward)  # CPU: no peak in the table
    text = out.read_text()
    assert "| device | cpu" in text and "| setting train_batch | 2 |" in text
    assert "**Packed vs padded train step" in text and "| baseline | 2 |" in text


def test_gpu_kernel_choice_for_the_ast_base_settings():
    """On a GPU, AST-base bf16 at 1024 frames gets cuDNN in every block for the three
    settings (ToMe at half MACs takes an even r, so token counts stay even and its bias is
    allowed)."""
    variants = device_check.ast_variants(device_check.FULL)
    assert bench.halving_tome_r(variants["baseline"]) == 101  # odd: rounded up to even
    assert list(variants)[1] == "ToMe r=102 (half MACs)"
    for model in variants.values():
        assert device_check.attention_kernels(model, 32, backend="gpu") == "cudnn x12"
    # An odd r alternates odd and even token counts (1214, 1119, 1024, ...): the blocks
    # with an odd count and a bias fall back to XLA.
    odd = variants["baseline"].clone(tome_r=95)
    assert device_check.attention_kernels(odd, 32, backend="gpu") == "cudnn x6, xla x6"
    assert device_check.attention_kernels(variants["baseline"].clone(dtype="float32"), 32,
                                          backend="gpu") == "xla x12"


def test_fsdd_like_lengths_and_packed_segments():
    import numpy as np
    rng = np.random.default_rng(0)
    frames = device_check.fsdd_like_frames(rng, 4000, max_frames=226)
    assert 36 <= np.median(frames) <= 44 and frames.min() >= 16 and frames.max() <= 226
    seg = device_check.packed_segments(rng, 3, 512)
    assert seg.shape == (3, 512) and (seg[:, -32:] == 0).all() and seg.max() >= 5
    assert bench.peak_bf16_flops("NVIDIA H200") is not None


def test_a_failing_section_is_reported_and_retried_with_xla(monkeypatch, tmp_path):
    """On the one-shot GPU run a section that fails under "auto" (cuDNN) is recorded and
    rerun with the XLA attention; the other sections still run."""
    from fast_ast_jax.models import attention
    monkeypatch.setattr(device_check, "cudnn_probe", lambda: None)  # as on a working GPU

    def fake_train(settings, peak, *, threads):
        if attention._DEFAULT.get() == "auto":
            raise NotImplementedError("cuDNN refused these shapes")
        return [{"table": "train", "setting": "baseline", "batch": 1, "clips/s": 2.0,
                 "attention": "xla x12"}]

    monkeypatch.setattr(device_check, "train_throughput", fake_train)
    out = tmp_path / "report.md"
    result = device_check.main(["--sections", "train", "--out", str(out)])
    assert result["rows"][0]["attention"] == "xla (fallback)"
    assert "cuDNN refused" in result["env"]["train failed (auto)"]
    assert "train failed (auto)" in out.read_text()
