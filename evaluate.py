"""Evaluate a checkpoint: `python evaluate.py --checkpoint WORKDIR [--sweep r=0,8,16]`.

Any checkpoint kind: an AST, the CNN teacher, or an ElasticAST (train.py with an elastic
config), which prints its hop x length table, once per setting.

Data comes from the checkpoint's own config unless --config is given. --tome_r /
--keep_rate (with --prune_layers) evaluate one token-reduction setting; --sweep evaluates
several and prints a table (accuracy, clips/s, speedup; MACs for an AST, XLA-counted flops for the CNN teacher)
and writes a PNG of accuracy against throughput. --hop_frames N scores clips longer than
the trained length by sliding windows (mean window logits / max window sigmoid,
fast_ast_jax.windows). --maps DIR writes the ToMe merge and TopK kept-patch maps of the first
--num_maps clips (fast_ast_jax.maps) for the checkpoint's or the given --tome_r / --keep_rate.
"""
from __future__ import annotations

from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from fast_ast_jax import cli
from fast_ast_jax.train.evaluation import (evaluate_checkpoint, parse_sweep,
                                          write_split_maps)

config_flags.DEFINE_config_file("config", None, "data config (default: the checkpoint's)",
                                lock_config=True)
flags.DEFINE_string("checkpoint", None, "workdir or its checkpoints/ directory")
flags.DEFINE_string("split", "eval", "config.data split to evaluate on")
flags.DEFINE_integer("tome_r", None, "ToMe: tokens merged per block")
flags.DEFINE_float("keep_rate", None, "TopK pruning keep rate")
flags.DEFINE_list("prune_layers", None, "0-based blocks that prune (default: the "
                  "checkpoint's), e.g. 2,3,4 for a 6-block model")
flags.DEFINE_string("sweep", None, "NAME=v1,v2,... with NAME r|tome_r|keep_rate")
flags.DEFINE_integer("hop_frames", None, "score whole clips by sliding windows of the "
                     "trained length every hop_frames frames (default: crop to it)")
flags.DEFINE_string("plot", None, "PNG path for the sweep plot (default WORKDIR/sweep.png)")
flags.DEFINE_string("maps", None, "write ToMe merge / TopK kept-patch PNG maps of the first "
                    "--num_maps clips into this directory")
flags.DEFINE_integer("num_maps", 4, "clips to draw maps of (with --maps)")
flags.DEFINE_integer("workers", None, "loader worker processes (default: the config's "
                     "data.worker_count, i.e. the training run's); with --hop_frames, "
                     "decoding threads (default 2)", lower_bound=0)
flags.mark_flags_as_required(["checkpoint"])


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    f = flags.FLAGS
    plot = f.plot or (Path(f.checkpoint) / "sweep.png" if f.sweep else None)
    with cli.user_errors(debug=cli.DEBUG.value):
        layers = tuple(int(i) for i in f.prune_layers) if f.prune_layers else None
        base = {k: v for k, v in (("tome_r", f.tome_r), ("prune_keep_rate", f.keep_rate),
                                  ("prune_layers", layers)) if v is not None}
        settings = [{**base, **s} for s in parse_sweep(f.sweep)] if f.sweep else [base]
        evaluate_checkpoint(f.checkpoint, config=f.config, split=f.split, settings=settings,
                            plot=plot, hop_frames=f.hop_frames, workers=f.workers)
        if f.maps:
            for path in write_split_maps(f.checkpoint, directory=f.maps,
                                         num_maps=f.num_maps, config=f.config, split=f.split,
                                         **base):
                print(f"map: {path}")
    if plot:
        print(f"plot: {plot}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
