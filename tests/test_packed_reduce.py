"""ToMe and TopK inside packed rows: never across samples, static shapes, adversarial packs."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fast_ast_jax import packing
from fast_ast_jax.models import packed_reduce as pr
from fast_ast_jax.models import tome
from fast_ast_jax.models.elastic import ElasticAST

RNG = np.random.default_rng(0)


def _segments(lengths, total):
    """Row of segment ids: samples of the given lengths, then padding up to `total`."""
    seg = np.concatenate([np.full(n, s + 1) for s, n in enumerate(lengths)]
                         + [np.zeros(total - sum(lengths))])
    return seg.astype(np.int32)


# (row lengths per row, row length T, slots S, r per layer, layers)
ADVERSARIAL = {
    "tiny_samples_full_row": ([[1, 2, 3, 1, 2, 3, 1, 2, 3, 2]], 20, 10, 50, 4),
    "one_long_sample": ([[24]], 24, 3, 9, 4),
    "mostly_padding": ([[2, 1], [3]], 30, 2, 12, 5),
    "r_exceeds_samples": ([[3, 2, 1], [1, 1, 1]], 12, 3, 100, 4),
    "mixed_rows": ([[5, 1, 7], [13], [2, 2, 2, 2, 2, 3]], 16, 6, 5, 3),
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
@pytest.mark.slow
def test_merging_never_crosses_samples(name):
    rows_lengths, t, slots, r, layers = ADVERSARIAL[name]
    seg0 = np.stack([_segments(lengths, t) for lengths in rows_lengths])
    rows = len(rows_lengths)
    x = jnp.asarray(RNG.normal(size=(rows, t, 4)), jnp.float32)
    seg, size, source = jnp.asarray(seg0), None, None
    for _ in range(layers):
        tokens = seg.shape[1]
        metric = jnp.asarray(RNG.normal(size=(rows, tokens, 8)), jnp.float32)
        x, seg, size, source = _merge_layer(x, metric, seg, size, source, r=r, slots=slots)
        assert seg.shape[1] == tokens - pr.row_merge_count(tokens, r, slots)
        src, seg_np, size_np = np.asarray(source), np.asarray(seg), np.asarray(size)[..., 0]
        for b in range(rows):
            # Each original token of a clip is held by exactly one clip token.
            held = src[b, seg_np[b] > 0].sum(axis=0)
            np.testing.assert_array_equal(held[seg0[b] > 0], 1.0)
            for j in range(seg_np.shape[1]):  # padding holds only padding (or nothing)
                members = seg0[b][src[b, j] > 0]
                assert (members == seg_np[b, j]).all(), "a group mixes segments"
            for s in range(1, slots + 1):  # padding is not conserved: it fills the rest
                n0 = int((seg0[b] == s).sum())
                here = seg_np[b] == s
                np.testing.assert_allclose(size_np[b, here].sum(), n0)
                if n0 > 0:
                    assert here.sum() >= 1, "a sample lost all its tokens"
                    assert here.sum() >= n0 // 2 ** layers  # a block merges <= ceil(n / 2)


@jax.jit(static_argnames=("r", "slots"))
def _merge_layer(x, metric, seg, size, source, *, r, slots):
    merge, seg = pr.packed_bipartite_matching(metric, seg, r=r, num_slots=slots)
    source = tome.merge_source(merge, x, source)
    x, size = tome.merge_wavg(merge, x, size)
    return x, seg, size, source


def test_quota_is_a_function_of_the_clips_own_count():
    seg = jnp.asarray(np.stack([_segments([8, 4, 6], 40), _segments([6, 8, 4, 22], 40)]))
    metric = jnp.asarray(RNG.normal(size=(2, 40, 8)), jnp.float32)
    new_seg = jax.jit(lambda m, s: pr.packed_bipartite_matching(m, s, r=10, num_slots=4)[1])(
        metric, seg)
    # ceil(n * 10 / 40) merges per clip: 8 -> 2, 4 -> 1, 6 -> 2, 22 -> 6, in any slot, in a
    # row with 22 padding tokens or none; the row loses 10 - floor(10 * 4 / 40) = 9 tokens.
    assert new_seg.shape == (2, 40 - 9)
    counts = [[int((new_seg[b] == s).sum()) for s in range(5)] for b in range(2)]
    assert counts == [[31 - 13, 6, 3, 4, 0], [31 - 29, 4, 6, 3, 16]]


def test_single_sample_equals_tome():
    t, r = 16, 5
    metric = jnp.asarray(RNG.normal(size=(1, t, 8)), jnp.float32)
    x = jnp.asarray(RNG.normal(size=(1, t, 3)), jnp.float32)

    @jax.jit
    def per_token(metric, x):
        """Each original token's merged value, for ToMe and the packed matcher."""
        ref_merge = tome.bipartite_soft_matching(metric, r=r)
        merge, _ = pr.packed_bipartite_matching(metric, jnp.ones((1, t), jnp.int32), r=r,
                                                num_slots=1)
        ref_x, got_x = tome.merge_wavg(ref_merge, x)[0], tome.merge_wavg(merge, x)[0]
        return (jnp.einsum("rjt,rjc->rtc", tome.merge_source(ref_merge, x), ref_x),
                jnp.einsum("rjt,rjc->rtc", tome.merge_source(merge, x), got_x), ref_x, got_x)

    # Same groups and values; only the order of the output tokens differs.
    per_token_ref, per_token_got, ref_x, got_x = per_token(metric, x)
    assert got_x.shape == ref_x.shape == (1, t - r, 3)
    np.testing.assert_allclose(per_token_got, per_token_ref, atol=1e-6)


def test_topk_keeps_each_samples_best_tokens():
    lengths, t, slots, rate = [[7, 1, 4], [12], [1, 1, 1, 1]], 12, 4, 0.5
    seg = jnp.asarray(np.stack([_segments(n, t) for n in lengths]))
    score = jnp.asarray(RNG.normal(size=(3, t)), jnp.float32)

    @jax.jit
    def run(score, seg):
        select, new_seg = pr.packed_topk(score, seg, keep_rate=rate, num_slots=slots)
        return select(score), new_seg

    kept_score, new_seg = run(score, seg)
    kept_score = np.asarray(kept_score)
    keep = pr.row_keep_count(t, rate, slots)
    assert new_seg.shape == (3, keep) == (3, min(t, 6 + 4))
    for b, row in enumerate(lengths):
        for s, n in enumerate(row, start=1):
            mine = np.asarray(new_seg[b]) == s
            assert mine.sum() == math.ceil(rate * n) >= 1
            own = np.sort(np.asarray(score[b])[np.asarray(seg[b]) == s])[::-1]
            # the kept ones are the sample's best
            np.testing.assert_allclose(np.sort(kept_score[b, mine])[::-1], own[:mine.sum()])
        real = [s for s in np.asarray(new_seg[b]) if s > 0]
        assert real == sorted(real), "row order is kept"
    # Row 0 is full: quotas 4 + 1 + 2; the 3 other places of its 10 are padding (pruned
    # tokens relabelled), not extra tokens for slot 1.
    assert [int((new_seg[0] == s).sum()) for s in range(4)] == [3, 4, 1, 2]
    # Row 2 has padding: every sample keeps exactly its quota, padding fills the rest.
    assert [int((new_seg[2] == s).sum()) for s in range(5)] == [6, 1, 1, 1, 1]


def test_static_counts():
    assert pr.row_merge_count(20, 50, 10) == 5
    assert pr.row_merge_count(10, 3, 12) == 0
    assert pr.row_keep_count(100, 0.5, 4) == 54
    assert pr.row_keep_count(10, 1.0, 4) == 10
    with pytest.raises(ValueError, match="keep_rate=0"):
        pr.row_keep_count(10, 0.0, 4)


KW = dict(num_classes=4, width=32, depth=2, num_heads=2, mlp_dim=64, fstride=16,
          tstride=16, num_mel_bins=32, frames=128, tome_r=4, prune_keep_rate=0.7,
          prune_layers=(0,))


def _pack(clips, max_tokens, slots=4):
    return packing.pack([packing.patchify(c) for c in clips], rows=1, max_tokens=max_tokens,
                        max_slots=slots).arrays()


def _clip(frames):
    return RNG.normal(size=(frames, 32)).astype(np.float32)


@pytest.mark.slow
def test_reduced_model_no_leakage():
    model = ElasticAST(**KW, trace_source=True)
    clips = [_clip(48), _clip(64), _clip(32)]  # 6 + 8 + 4 tokens
    packed = _pack(clips, 48)  # 30 padding tokens absorb the rest of r
    params = jax.jit(model.init)(jax.random.PRNGKey(0), packed)["params"]
    apply = jax.jit(model.apply)
    logits, _, source = apply({"params": params}, packed)
    assert source.shape[1] == model.token_counts(48, 4)[-1]
    for s, clip in enumerate(clips):  # reduced exactly as when packed alone
        alone, _, _ = apply({"params": params}, _pack([clip], 48))
        np.testing.assert_allclose(logits[0, s], alone[0, 0], atol=1e-5, rtol=1e-5)
    # A full row (no padding): perturbing sample 1 leaves samples 0 and 2 unchanged.
    full = _pack(clips, 18)
    out, _, src = apply({"params": params}, full)
    seg0 = full["segment_ids"][0]
    for group in np.asarray(src[0]):  # padding places left by merges hold nothing
        assert len(set(seg0[group > 0])) <= 1
    clips[1] = clips[1] + _clip(64)
    out2, _, _ = apply({"params": params}, _pack(clips, 18))
    np.testing.assert_allclose(out2[0, [0, 2]], out[0, [0, 2]], atol=1e-6)
    assert float(jnp.abs(out2[0, 1] - out[0, 1]).max()) > 1e-4


def _logits_across_packings(over):
    """The logits of one 10-token clip packed in 7 rows of 32 tokens: alone, first, middle,
    last, in full rows and in rows with padding, beside different neighbours."""
    model = ElasticAST(**{**KW, "depth": 3, "frames": 256, **over})
    clip = _clip(80)  # 2 x 5 patches
    layouts = [([], []), ([], [_clip(48), _clip(64)]), ([_clip(16)], [_clip(160)]),
               ([_clip(96), _clip(32)], []), ([_clip(16), _clip(16)], [_clip(48)]),
               ([_clip(160)], [_clip(16)]), ([_clip(64)], [_clip(96)])]
    packs = [_pack(before + [clip] + after, 32) for before, after in layouts]
    fill = [int((p["segment_ids"] > 0).sum()) for p in packs]
    assert fill == [10, 24, 32, 26, 20, 32, 30]  # full rows and rows with padding
    params = jax.jit(model.init)(jax.random.PRNGKey(0), packs[0])["params"]
    apply = jax.jit(model.apply)
    return np.stack([np.asarray(apply({"params": params}, p)[0][0, len(before)])
                     for p, (before, _) in zip(packs, layouts)])


@pytest.mark.parametrize("over", [dict(tome_r=6), dict(prune_keep_rate=0.6, prune_layers=(0, 1)),
                                  dict(tome_r=4, prune_keep_rate=0.7, prune_layers=(1,))])
@pytest.mark.slow
def test_a_clips_logits_do_not_depend_on_its_packing(over):
    # Tolerance 1e-5: float32 rounding of masked sums over rows laid out differently.
    # Before per-clip quotas (leftover merges / keeps given out in slot order) the same
    # clip differed by 0.32 (ToMe), 1.1 (TopK), 0.53 (both) across these packings.
    logits = _logits_across_packings(over)
    assert np.abs(logits - logits[0]).max() < 1e-5
    assert np.abs(logits[0]).max() > 1e-2  # real, non-trivial outputs


def test_merge_modes_match_tome_definitions():
    seg = jnp.asarray(_segments([5, 4], 12))[None]
    metric = jnp.asarray(RNG.normal(size=(1, 12, 8)), jnp.float32)
    x = jnp.asarray(RNG.normal(size=(1, 12, 3)), jnp.float32)

    @jax.jit
    def run(metric, x):
        merge, new_seg = pr.packed_bipartite_matching(metric, seg, r=4, num_slots=2)
        src = tome.merge_source(merge, x)
        return merge(x, "sum"), merge(x, "mean"), merge(x, "amax"), src, new_seg

    total, mean, amax, src, new_seg = (np.asarray(a) for a in run(metric, x))
    for j, group in enumerate(src[0] > 0):
        if new_seg[0, j] == 0:
            continue  # padding
        members = np.asarray(x)[0, group]
        np.testing.assert_allclose(total[0, j], members.sum(0), atol=1e-6)
        np.testing.assert_allclose(mean[0, j], members.mean(0), atol=1e-6)
        np.testing.assert_allclose(amax[0, j], members.max(0), atol=1e-6)


def test_received_attention_is_within_sample_attention():
    seg = jnp.asarray(np.stack([_segments([3, 2], 6), _segments([6], 6)]))
    q = jnp.asarray(RNG.normal(size=(2, 6, 2, 4)), jnp.float32)
    k = jnp.asarray(RNG.normal(size=(2, 6, 2, 4)), jnp.float32)
    got = np.asarray(jax.jit(pr.received_attention)(q, k, seg))
    logits = np.einsum("rihd,rjhd->rhij", q, k) / 2.0
    s = np.asarray(seg)
    allowed = (s[:, :, None] == s[:, None, :]) & (s[:, None, :] > 0)
    logits = np.where(allowed[:, None], logits, -np.inf)
    with np.errstate(invalid="ignore"):  # padding queries: no allowed key, dropped below
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs = np.nan_to_num(probs / probs.sum(-1, keepdims=True))
    want = (probs * (s > 0)[:, None, :, None]).mean(1).sum(1)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # each sample's scores sum to its token count (every real query's row sums to 1)
    np.testing.assert_allclose(got[0, :3].sum(), 3, atol=1e-5)
