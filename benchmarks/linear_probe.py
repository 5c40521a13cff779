"""Linear probe: how much a checkpoint's frozen clip embeddings say about the labels.

    python benchmarks/linear_probe.py --checkpoint runs/fsdd_pretrain \
        --csv ../shared/data/fsdd/meta.csv --split_column fold --group_column speaker \
        --control random --control fbank

Embeds the CSV's train and test clips with `fast_ast_jax.embed` (the encoder on every
patch, no masking; the clip embedding is the mean of the class tokens after the final
LayerNorm), standardises them with the training clips' mean and std and fits a multinomial
logistic regression (full batch, Adam then a fixed number of steps; an L2 penalty chosen by
cross-validation over the training clips, grouped by --group_column when given so that a
held-out speaker stays unseen there too). Printed: the test accuracy per feature set, the
chosen penalty and the cross-validated accuracy, and a markdown table row.

Controls (--control, repeatable), the same probe on other features of the same clips:
    random: the checkpoint's encoder with freshly initialised weights (seed 0) - what the
        architecture gives before any training;
    fbank: the mean and std over time of each mel bin of the checkpoint's normalised fbank
        (2 x mel features) - what no encoder gives.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fast_ast_jax import checkpoints  # noqa: E402
from fast_ast_jax.audio.fbank import fbank  # noqa: E402
from fast_ast_jax.audio.features import normalize  # noqa: E402
from fast_ast_jax.audio.io import load_audio  # noqa: E402
from fast_ast_jax.embeddings import embed_files, encoder  # noqa: E402

PENALTIES = (1e-4, 1e-3, 1e-2, 1e-1)


def read_split(csv_path: Path, *, audio_dir: Path, split_column: str, split: str,
               label_column: str, group_column: str | None
               ) -> tuple[list[str], list[str], list[str]]:
    """(files, labels, groups) of the CSV's rows whose `split_column` equals `split`."""
    with open(csv_path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r[split_column] == split]
    if not rows:
        raise SystemExit(f"{csv_path}: no row has {split_column}={split!r}")
    return ([str(audio_dir / r["filename"]) for r in rows], [r[label_column] for r in rows],
            [r[group_column] if group_column else str(i % 5) for i, r in enumerate(rows)])


def embeddings(files: list[str], *, bundle, batch_size: int, pool: str) -> np.ndarray:
    """(F, W) clip embeddings (pool "cls") or means of the patch tokens over each clip's
    windows (pool "tokens"); a file that cannot be read stops the probe."""
    out = []
    for r in embed_files(files, checkpoint=bundle, batch_size=batch_size,
                         tokens=pool == "tokens"):
        if r.error is not None:
            raise SystemExit(f"error: {r.error}")
        out.append(r.clip.scores if pool == "cls"
                   else np.mean([z[1:].mean(0) for _, _, z in r.clip.windows], axis=0))
    return np.stack(out).astype(np.float32)


def fbank_stats(files: list[str], *, frontend) -> np.ndarray:
    """(F, 2 * mel) mean and std over the clip's own frames (no padding) of each mel bin of
    the normalised fbank."""
    rng = np.random.default_rng(0)
    out = []
    for f in files:
        wave = load_audio(f, sample_rate=frontend.sample_rate)
        x = normalize(fbank(wave, frontend=frontend, rng=rng if frontend.dither else None),
                      frontend=frontend)  # (frames, mel)
        out.append(np.concatenate([x.mean(0), x.std(0)]))
    return np.stack(out).astype(np.float32)


@jax.jit
def _fit(x, y, penalty):
    """Multinomial logistic regression weights (D + 1, C) on standardised x (N, D)."""
    classes = 64  # static upper bound; unused classes get no data and stay at -inf-ish
    w = jnp.zeros((x.shape[1] + 1, classes))
    xb = jnp.concatenate([x, jnp.ones((x.shape[0], 1))], 1)
    opt = optax.adam(0.05)

    def loss(w):
        logits = xb @ w
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return nll + penalty * jnp.sum(w[:-1] ** 2)

    def step(carry, _):
        w, s = carry
        g = jax.grad(loss)(w)
        u, s = opt.update(g, s)
        return (optax.apply_updates(w, u), s), None

    (w, _), _ = jax.lax.scan(step, (w, opt.init(w)), None, length=500)
    return w


def accuracy(w, x, y) -> float:
    xb = np.concatenate([x, np.ones((len(x), 1), x.dtype)], 1)
    return float(np.mean(np.argmax(xb @ np.asarray(w), 1) == y))


def probe(train: np.ndarray, y_train: np.ndarray, groups: list[str], test: np.ndarray,
          y_test: np.ndarray) -> dict:
    """Test accuracy of the probe with the penalty of the best grouped-CV accuracy."""
    mu, sd = train.mean(0), train.std(0) + 1e-6
    train, test = (train - mu) / sd, (test - mu) / sd
    groups = np.asarray(groups)
    cv = {}
    for p in PENALTIES:
        scores = [accuracy(_fit(train[groups != g], y_train[groups != g], p),
                           train[groups == g], y_train[groups == g])
                  for g in np.unique(groups)]
        cv[p] = float(np.mean(scores))
    best = max(PENALTIES, key=lambda p: cv[p])
    return {"penalty": best, "cv_accuracy": cv[best],
            "test_accuracy": accuracy(_fit(train, y_train, best), test, y_test)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="AST or mae training workdir")
    p.add_argument("--csv", required=True, type=Path)
    p.add_argument("--audio_dir", type=Path, default=None, help="default: the CSV's folder")
    p.add_argument("--split_column", default="fold")
    p.add_argument("--train", default="train")
    p.add_argument("--test", default="test")
    p.add_argument("--label_column", default="label")
    p.add_argument("--group_column", default=None,
                   help="cross-validation groups (default: 5 interleaved folds)")
    p.add_argument("--control", action="append", default=[], choices=["random", "fbank"])
    p.add_argument("--pool", action="append", default=[], choices=["cls", "tokens"],
                   help="clip embedding: the class tokens (embed's, default) and/or the "
                   "mean of the patch tokens")
    p.add_argument("--batch_size", type=int, default=32)
    args = p.parse_args(argv)
    audio_dir = args.audio_dir or args.csv.parent
    split = {name: read_split(args.csv, audio_dir=audio_dir, split_column=args.split_column,
                              split=s, label_column=args.label_column,
                              group_column=args.group_column)
             for name, s in (("train", args.train), ("test", args.test))}
    names = sorted(set(split["train"][1]))
    if len(names) > 64:
        raise SystemExit(f"{args.csv}: {len(names)} classes; the probe takes at most 64")
    y = {k: np.asarray([names.index(v) if v in names else -1 for v in split[k][1]])
         for k in split}
    bundle = checkpoints.load(args.checkpoint)
    encoder(bundle, where=args.checkpoint)  # an unsupported kind fails before embedding
    sets = {"embeddings": bundle}
    if "random" in args.control:
        fresh = bundle.model.init(jax.random.PRNGKey(0), jnp.zeros(
            (1, bundle.frontend.target_frames, bundle.frontend.num_mel_bins)))["params"]
        sets["random init"] = dataclasses.replace(bundle, params=fresh)
    rows = []
    for name, b in sets.items():
        for pool in args.pool or ["cls"]:
            feats = {k: embeddings(split[k][0], bundle=b, batch_size=args.batch_size,
                                   pool=pool) for k in split}
            rows.append((f"{name} ({pool})", feats))
    if "fbank" in args.control:
        rows.append(("fbank mean+std", {k: fbank_stats(split[k][0], frontend=bundle.frontend)
                                        for k in split}))
    print(f"| features | dim | penalty | CV accuracy ({args.group_column or '5 folds'}) | "
          f"test accuracy ({len(y['test'])} clips) |")
    print("|---|---|---|---|---|")
    results = {}
    for name, feats in rows:
        r = results[name] = probe(feats["train"], y["train"], split["train"][2],
                                  feats["test"], y["test"])
        print(f"| {name} | {feats['train'].shape[1]} | {r['penalty']:g} | "
              f"{r['cv_accuracy']:.3f} | **{r['test_accuracy']:.3f}** |", flush=True)
    return results


if __name__ == "__main__":
    main()
