"""MAC counting (by hand and against XLA), token plans, timing and memory helpers."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf

from benchmarks import packing as packing_bench
from benchmarks import throughput
from fast_ast_jax import bench
from fast_ast_jax.models import attention
from fast_ast_jax.models.ast import create_ast
from fast_ast_jax.train.spec import read_config
from fast_ast_jax.train.task import build_model
from tests.helpers import load_config

# width 8, 2 heads, mlp 16, 2 blocks; 16 mel x 36 frames -> 1 x 3 patches + CLS + DIST = 5.
TOY = dict(width=8, depth=2, num_heads=2, mlp_dim=16, num_mel_bins=16, frames=36,
           num_classes=3)


def test_macs_by_hand():
    macs = bench.ast_macs(create_ast("tiny", **TOY))
    t, w = 5, 8
    # The last block computes only the 2 prefix tokens: q = 2 queries, out proj and MLP.
    first = dict(qkv=3 * t * w * w, attn_scores=t * t * w, attn_values=t * t * w,
                 attn_out=t * w * w, mlp=2 * t * w * 16)
    last = dict(qkv=3 * t * w * w, attn_scores=2 * t * w, attn_values=2 * t * w,
                attn_out=2 * w * w, mlp=2 * 2 * w * 16)
    want = dict(patch_embed=3 * 16 * 16 * w, head=w * 3, tome_match=0, topk_cls_attn=0,
                **{k: first[k] + last[k] for k in first})
    assert macs.parts == want
    assert macs.total == 3 * 256 * 8 + (960 + 200 + 200 + 320 + 1280) + (
            960 + 80 + 80 + 128 + 512) + 24 == 10888
    assert [(lt.tokens_in, lt.tokens_out, lt.queries) for lt in macs.layers] == [
            (5, 5, 0), (5, 5, 2)]


def test_macs_scale_with_frames():
    model = create_ast("base")
    full, half = bench.ast_macs(model), bench.ast_macs(model, frames=512)
    assert full.layers[0].tokens_in == 2 + 12 * 101 == 1214
    assert half.layers[0].tokens_in == 2 + 12 * 50
    # AST-base at 1024 frames: ~130 GMACs in 11 full blocks (T=1214, W=768) and a last
    # block whose 2 prefix tokens alone query and go through the out projection and MLP.
    t, w = 1214, 768
    blocks = 11 * (4 * t * w ** 2 + 2 * t ** 2 * w + 2 * t * w * 3072) + (
            3 * t * w ** 2 + 2 * 2 * t * w + 2 * w ** 2 + 2 * 2 * w * 3072)
    assert full.total - full.parts["patch_embed"] - full.parts["head"] == blocks
    assert half.total < full.total / 2


def _xla_ratio(model, frames, mel):
    x = jnp.zeros((1, frames, mel))
    params = jax.jit(model.init)(jax.random.key(0), x)["params"]
    # The plain attention: XLA's cost analysis counts a loop body once, not per iteration.
    with attention.default_implementation("xla"):
        flops = bench.xla_flops(lambda p, x: model.apply({"params": p}, x), params, x)
    return flops / (2 * bench.ast_macs(model, frames=frames).total)


@pytest.mark.slow
def test_macs_match_xla_cost_analysis():
    # XLA also counts elementwise flops (LayerNorm, GELU, softmax, adds): ~8% more here,
    # the same share with and without token reduction (the counts track the token plan).
    fields = dict(width=128, depth=2, num_heads=2, mlp_dim=512, frames=256, num_mel_bins=64,
                  num_classes=10, prune_layers=(0,))
    ratios = [_xla_ratio(create_ast("tiny", **fields, **reduction), 256, 64)
              for reduction in ({}, dict(tome_r=20, prune_keep_rate=0.7, prune_fuse=True))]
    assert all(1.0 <= r <= 1.10 for r in ratios), ratios
    assert max(ratios) - min(ratios) < 0.02, ratios


def test_token_plan_reference_values_and_reduction_parts():
    # The last block never merges (docs/REFERENCES.md §4's last count is 3) and computes only
    # CLS / DIST.
    tome = bench.ast_macs(create_ast("base", tome_r=300))
    assert [lt.tokens_out for lt in tome.layers] == [914, 614, 314, 158, 80, 41, 22, 12, 7, 5,
                                                     4, 4]
    assert tome.layers[3].tokens_in == 314 and tome.layers[0].matched == 1214
    assert tome.layers[-1].matched == 0 and tome.layers[-1].queries == 2
    assert tome.parts["tome_match"] == sum(
            -(-n // 2) * (n // 2) * 64 for n in [1214, 914, 614, 314, 158, 80, 41, 22, 12, 7,
                                                 5])
    # TopK on AST stride 16 (8 x 64 patches, docs/REFERENCES.md §5): k=0.7 -> 359 / 252 / 177.
    topk = bench.ast_macs(create_ast("base", fstride=16, tstride=16, prune_keep_rate=0.7))
    assert [topk.layers[i].tokens_out - 2 for i in (2, 3, 6, 9)] == [512, 359, 252, 177]
    assert topk.parts["topk_cls_attn"] == 768 * (514 + 361 + 254)
    assert topk.total < bench.ast_macs(create_ast("base", fstride=16, tstride=16)).total


def test_sweep_macs_never_rise_on_the_demo_model():
    """The demo's sweeps (evaluate.py --sweep r=... / keep_rate=...): more merging or pruning
    never costs MACs (a last-block reduction once did: r=4 > r=0)."""
    c = load_config("demo")
    model = build_model(read_config(c).model, num_classes=8)
    assert (model.depth, model.num_mel_bins, model.frames, model.fstride) == (4, 64, 128, 10)
    tokens = model.token_plan()[0].tokens_in  # 5 x 12 patches + CLS + DIST
    assert tokens == 62

    def never_rise(settings):
        macs = [bench.ast_macs(model.clone(**s)).total for s in settings]
        assert all(b <= a for a, b in zip(macs, macs[1:])), list(zip(settings, macs))
        return macs

    macs = never_rise([dict(tome_r=r) for r in range(tokens // 2 + 1)])
    assert macs[4] < macs[0] and macs[-1] < macs[0] / 2
    rates = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)
    for fuse in (False, True):
        macs = never_rise([dict(prune_keep_rate=k, prune_fuse=fuse) for k in rates])
        assert macs[1] < macs[0]
    never_rise([dict(prune_keep_rate=0.7, tome_r=r) for r in range(0, tokens // 2 + 1, 3)])


@pytest.mark.slow
def test_token_counts_match_the_forward_pass():
    model = create_ast("tiny", width=16, depth=3, num_heads=2, mlp_dim=32, num_mel_bins=32,
                       frames=96, num_classes=4, tome_r=3, prune_keep_rate=0.5,
                       prune_layers=(1,))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 96, 32), dtype=np.float32))
    params = jax.jit(model.init)(jax.random.key(0), x)["params"]
    _, state = jax.jit(lambda p, x: model.apply({"params": p}, x, mutable=["intermediates"]))(
            params, x)
    layers = bench.layer_tokens(model, frames=96)
    assert layers == tuple(bench.layer_tokens(model, frames=96))
    assert [lt.tokens_out for lt in layers] == model.token_counts(96)
    assert state["intermediates"]["sizes"][0].shape == (2, layers[-1].tokens_out, 1)
    kept = state["intermediates"]["prune_kept_1"][0]
    assert kept.shape == (2, layers[1].tokens_in - 2 - (layers[1].tokens_in - 2) // 2)


def test_measure_throughput_and_memory():
    x = jnp.ones((64, 64))
    fn = jax.jit(lambda x: jnp.tanh(x @ x).sum())
    timing = bench.measure_throughput(fn, x, warmup=1, repeats=3)
    assert len(timing.times) == 3 and all(t > 0 for t in timing.times)
    assert timing.median > 0 and timing.rate(4) > 0
    memory = bench.compiled_memory(jax.grad(lambda x: jnp.tanh(x @ x).sum()), x)
    assert memory["temp"] > 0 and memory["argument"] == 64 * 64 * 4
    with pytest.raises(ValueError, match="repeats >= 1"):
        bench.measure_throughput(fn, x, repeats=0)
    # Several calls against each other: every one warmed up, then one call each per round.
    calls, rounds = [], []
    timings = bench.measure_interleaved(
            {"a": lambda: calls.append("a") or fn(x), "b": lambda: calls.append("b") or fn(x)},
            warmup=2, repeats=3, log=rounds.append)
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3
    assert [len(t.times) for t in timings.values()] == [3, 3] and len(rounds) == 5
    assert bench.Timing((1.0, 2.0, 3.0, 4.0, 5.0)).spread == pytest.approx(2.0 / 3.0)
    assert bench.Timing((1.0,)).spread == 0.0


@pytest.mark.slow
def test_throughput_script_smoke(tmp_path, capsys):
    out = tmp_path / "t.json"
    rows = throughput.main(["--size", "tiny", "--depth", "2", "--frames", "48", "--batch", "1",
                            "--repeats", "1", "--r", "--keep-rates", "--no-torch",
                            "--no-train", "--allow-load", "--out", str(out)])
    assert [r["setting"] for r in rows] == ["baseline", "baseline, xla attention"]
    assert all(r["clips_per_s"] > 0 and r["gmacs"] > 0 for r in rows)
    saved = json.loads(out.read_text())
    assert saved["rows"] == rows and saved["load_1min"]["start"] >= 0
    text = capsys.readouterr().out
    assert "| 48 | baseline |" in text and "1-minute load average:" in text


@pytest.mark.slow
def test_profile_times_each_block_part_in_jax_and_pytorch_with_flop_rates(capsys):
    rows = throughput.main(["--size", "tiny", "--depth", "1", "--frames", "48", "--batch", "1",
                            "--repeats", "1", "--r", "--keep-rates", "--no-xla-baseline",
                            "--no-train", "--profile", "--threads", "1"])
    prof = {r["setting"]: r for r in rows if r["table"] == "profile"}
    parts = ["2x LayerNorm", "qkv + out projections", "attention (chunked)",
             "attention (xla)", "attention matmuls only (QK, AV; no softmax)",
             "MLP (fc1, exact GELU, fc2)", "GEMM 2048^3 (peak reference)"]
    torch_parts = [p.replace("(chunked)", "(SDPA)") for p in parts
                   if p not in ("attention (xla)", "attention matmuls only (QK, AV; no softmax)")]
    assert set(prof) == ({f"JAX: {p}" for p in parts}
                         | {f"PyTorch 1 threads: {p}" for p in torch_parts})
    for name, r in prof.items():
        assert r["seconds_per_forward"] > 0
        assert (r["gflops_per_s"] is None) == ("LayerNorm" in name)
    gemm = prof["JAX: GEMM 2048^3 (peak reference)"]
    assert gemm["gflops_per_s"] == pytest.approx(2 * 2048 ** 3 / gemm["seconds_per_forward"]
                                                 / 1e9)
    assert "| GFLOP/s |" in capsys.readouterr().out


def test_throughput_refuses_a_results_file_under_load(tmp_path, monkeypatch):
    monkeypatch.setattr(throughput.os, "getloadavg", lambda: (6.5, 5.0, 4.0))
    out = tmp_path / "t.md"
    with pytest.raises(SystemExit, match="load average is 6.50 > 1.5"):
        throughput.main(["--size", "tiny", "--depth", "1", "--frames", "48", "--out", str(out)])
    assert not out.exists()


def test_train_step_fn_weights_and_updates():
    """The benchmark step: weighted float32 BCE over the real clips, and AdamW moves params."""
    params = {"w": jnp.ones((3, 2))}
    forward = lambda p, x: (x @ p["w"], jnp.array([1.0, 0.0]))
    tx, step = bench.train_step_fn(forward)
    x, y = jnp.ones((2, 3)), jnp.array([[1.0, 0.0], [0.0, 1.0]])
    new, _, loss = jax.jit(step)(params, tx.init(params), x, y)
    want = np.mean([np.log1p(np.exp(-3.0)), np.log1p(np.exp(3.0))])  # clip 0 only
    np.testing.assert_allclose(float(loss), want, rtol=1e-6)
    assert not np.allclose(np.asarray(new["w"]), 1.0)


def test_peak_table_and_mfu():
    assert bench.peak_bf16_flops("NVIDIA H200") == 989e12
    assert bench.peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert bench.peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert bench.peak_bf16_flops("cpu") is None
    assert bench.mfu(clips_per_s=10.0, forward_macs=5e9, peak_flops=None, train=True) is None
    assert bench.mfu(clips_per_s=10.0, forward_macs=5e9, peak_flops=1e12,
                     train=True) == pytest.approx(0.3)
    assert bench.mfu(clips_per_s=10.0, forward_macs=5e9, peak_flops=1e12,
                     train=False) == pytest.approx(0.1)


def test_markdown_table_columns():
    rows = [dict(table="forward", frames=8, setting="baseline", tokens_out=5, gmacs=1.0,
                 clips_per_s=2.0, speedup=1.0, ideal_speedup=1.0, efficiency=1.0,
                 vs_torch=1.5)]
    text = throughput.markdown(rows)
    assert "JAX/PyTorch" in text and "| 8 | baseline | 5 | 1.0 | 2.000 |" in text
    assert text.rstrip().endswith("| 1.50 |")


@pytest.mark.slow
def test_packing_benchmark_times_padded_and_packed_train_steps(tmp_path, capsys):
    rng = np.random.default_rng(0)
    names = [f"{i}.wav" for i in range(12)]
    for name in names:  # FSDD-like: 0.2-0.9 s
        sf.write(tmp_path / name, 0.1 * rng.standard_normal(int(16000 * rng.uniform(0.2, 0.9))),
                 16000)
    (tmp_path / "meta.csv").write_text("filename\n" + "\n".join(names) + "\n")
    packing_bench.main(["--data", str(tmp_path), "--size", "tiny", "--depth", "1",
                        "--clips", "12", "--batch", "4", "--rows", "2", "--max-tokens", "96",
                        "--rounds", "1", "--train", "--r", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("12 clips, native tokens per clip mean")
    steps = {line.split(":")[0]: line for line in lines[1:]}
    assert set(steps) == {"padded", "packed", "packed r=2"}
    assert "4 clips per train step" in steps["padded"]
    assert all("clips/s" in line for line in steps.values())


@pytest.mark.slow
def test_pretrain_cost_benchmark(capsys):
    """benchmarks/pretrain_cost.py on a toy model: both steps run, the table is printed and
    the MAC ratio is the supervised model's MACs over the encoder's on the visible patches
    plus the decoder's."""
    from benchmarks import pretrain_cost
    from fast_ast_jax.models import mae

    out = pretrain_cost.main(["--size", "tiny", "--depth", "2", "--frames", "64", "--mel",
                              "32", "--batch", "2", "--repeats", "1", "--mask-ratio", "0.75",
                              "--decoder-width", "16", "--decoder-heads", "2"])
    printed = capsys.readouterr().out
    assert "| supervised AST |" in printed and "| masked pretraining" in printed
    fields = dict(frames=64, num_mel_bins=32, fstride=16, tstride=16, depth=2)
    pretrain = mae.create_mae("tiny", mask_ratio=0.75, decoder_width=16, decoder_depth=2,
                              decoder_heads=2, **fields)
    assert pretrain.num_visible == 2  # 8 patches, a quarter visible
    want = bench.ast_macs(create_ast("tiny", num_classes=10, **fields)).total / (
        bench.ast_macs(pretrain).total + pretrain.decoder_macs())
    assert out["mac_ratio"] == pytest.approx(want) and out["mac_ratio"] > 1
    assert out["speedup"] > 0
