"""Train (and evaluate) an AST: `python train.py --config configs/demo.py --workdir DIR`.

Configs with an `elastic` block (configs/fsdd_elastic.py, ...) train the packed ElasticAST
through the same trainer (fast_ast_jax.train.task).

Any config field can be overridden: `--config.batch_size=16 --config.model.depth=4`.
Re-running with the same workdir resumes from its latest checkpoint.
"""
from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

from fast_ast_jax import cli
from fast_ast_jax.train.loop import train_and_evaluate

config_flags.DEFINE_config_file("config", None, "training config file", lock_config=True)
flags.DEFINE_string("workdir", None, "checkpoints, metrics.jsonl and TensorBoard logs")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO
        logging.set_verbosity(logging.WARNING)
    with cli.user_errors(debug=cli.DEBUG.value):
        train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
