"""Host-side packing: patch layout equals AST's conv, greedy rows, slots, errors."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fast_ast_jax import packing, windows
from fast_ast_jax.models import ElasticAST
from fast_ast_jax.patches import patch_shape

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("patch,fstride,tstride", [(16, 16, 16), (16, 10, 10), (16, 12, 8),
                                                  ((48, 2), 48, 2), ((16, 8), 10, 4)])
def test_patchify_matches_ast_conv(patch, fstride, tstride):
    import flax.linen as nn

    ph, pw = patch_shape(patch)
    fbank = RNG.normal(size=(70, 48)).astype(np.float32)  # (frames, mel)
    patches, pos = packing.patchify(fbank, patch_size=patch, fstride=fstride, tstride=tstride)
    f_dim, t_dim = (48 - ph) // fstride + 1, (70 - pw) // tstride + 1
    assert patches.shape == (f_dim * t_dim, ph * pw) and pos.shape == (f_dim * t_dim, 2)
    np.testing.assert_array_equal(pos, [(f, t) for f in range(f_dim) for t in range(t_dim)])
    conv = nn.Conv(8, (ph, pw), strides=(fstride, tstride), padding="VALID")
    x = jnp.asarray(fbank.T)[None, ..., None]  # (1, F, T, 1) as in AST.embed
    params = conv.init(jax.random.PRNGKey(0), x)["params"]
    want = conv.apply({"params": params}, x).reshape(-1, 8)
    got = (patches @ np.asarray(params["kernel"]).reshape(ph * pw, 8)
           + np.asarray(params["bias"]))
    np.testing.assert_allclose(got, np.asarray(want), atol=1e-4)


@pytest.mark.parametrize("patch,fstride,tstride", [(16, 16, 16), ((48, 2), 48, 2),
                                                  ((16, 8), 10, 4)])
def test_device_rows_are_the_host_packing(patch, fstride, tstride):
    """windows.packed_rows (the jitted packing of inference windows) gives each window the
    row that packing.pack makes of its patchify'd first max(frames, patch frames) frames."""
    model = ElasticAST(num_classes=2, width=16, depth=1, num_heads=1, mlp_dim=16,
                       num_mel_bins=48, frames=70, patch_size=patch, fstride=fstride,
                       tstride=tstride)
    x = RNG.normal(size=(3, 70, 48)).astype(np.float32)
    frames = np.array([70, 31, 1])  # whole, part of, less than one patch's frames
    tokens = 200
    got = windows.packed_rows(jnp.asarray(x), jnp.asarray(frames), model=model, tokens=tokens)
    pw = patch_shape(patch)[1]
    for i, n in enumerate(frames):
        sample = packing.patchify(x[i, :max(n, pw)], patch_size=patch, fstride=fstride,
                                  tstride=tstride)
        want = packing.pack([sample], rows=1, max_tokens=tokens, max_slots=1).arrays()
        for key in ("patches", "positions", "segment_ids"):
            np.testing.assert_array_equal(np.asarray(got[key][i]), want[key][0], err_msg=key)


def test_assign_rows_greedy_order_preserving_and_slot_limit():
    assert packing.assign_rows([3, 4, 2, 5, 1], max_tokens=8, max_slots=4) == [
        [0, 1], [2, 3, 4]]
    assert packing.assign_rows([1] * 5, max_tokens=8, max_slots=2) == [[0, 1], [2, 3], [4]]
    with pytest.raises(ValueError, match="sample 1 has 9 tokens.*max_tokens=8"):
        packing.assign_rows([3, 9], max_tokens=8, max_slots=4)


def _sample(n, value):
    return np.full((n, 4), value, np.float32), np.stack([np.zeros(n), np.arange(n)], 1)


def test_pack_segments_positions_slots_and_efficiency():
    samples = [_sample(3, 1.0), _sample(4, 2.0), _sample(6, 3.0)]
    b = packing.pack(samples, rows=3, max_tokens=8, max_slots=3)
    np.testing.assert_array_equal(b.segment_ids[0], [1, 1, 1, 2, 2, 2, 2, 0])
    np.testing.assert_array_equal(b.segment_ids[1], [1] * 6 + [0, 0])
    np.testing.assert_array_equal(b.segment_ids[2], 0)  # an all-padding row
    np.testing.assert_array_equal(b.slot_index, [[0, 1, -1], [2, -1, -1], [-1, -1, -1]])
    np.testing.assert_array_equal(b.patches[1, :6], 3.0)
    np.testing.assert_array_equal(b.positions[0, 3:7, 1], [0, 1, 2, 3])
    assert b.efficiency == pytest.approx(13 / 24) and b.num_samples == 3
    labels = np.array([7, 8, 9])
    np.testing.assert_array_equal(b.slot_values(labels, fill=-1),
                                  [[7, 8, -1], [9, -1, -1], [-1, -1, -1]])


def test_pack_too_many_rows_is_an_error():
    with pytest.raises(ValueError, match="need 2 rows.*rows=1"):
        packing.pack([_sample(5, 0), _sample(5, 0)], rows=1, max_tokens=8, max_slots=4)


def test_greedy_batches_cover_every_sample_once_in_order():
    lengths = RNG.integers(1, 9, size=40).tolist()
    batches = packing.greedy_batches(lengths, rows=3, max_tokens=8, max_slots=4)
    assert [i for b in batches for i in b] == list(range(40))
    for b in batches:  # each batch really fits
        packing.pack([_sample(lengths[i], 0) for i in b], rows=3, max_tokens=8, max_slots=4)


def test_token_dropout_keeps_fraction_in_order():
    kept = packing.token_dropout(100, rate=0.1, rng=np.random.default_rng(1))
    assert len(kept) == 90 and np.all(np.diff(kept) > 0)
    assert len(packing.token_dropout(3, rate=0.9, rng=np.random.default_rng(1))) == 1
    with pytest.raises(ValueError, match="rate=1.0"):
        packing.token_dropout(5, rate=1.0, rng=np.random.default_rng(0))


def test_arrays_is_the_model_input():
    batch = packing.pack([_sample(3, 1.0), _sample(2, 2.0)], rows=1, max_tokens=6,
                         max_slots=2)
    arrays = batch.arrays()
    assert sorted(arrays) == ["patches", "positions", "segment_ids", "slot_index"]
    np.testing.assert_array_equal(arrays["segment_ids"], [[1, 1, 1, 2, 2, 0]])
