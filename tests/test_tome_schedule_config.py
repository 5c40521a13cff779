"""ToMe schedules from a config file and from the command line (train.py's absl flags).

One type (`tome.parse_schedule`): config.model.tome_r (int, constant) or
config.model.tome_schedule ("ramp:R,INFLECTION" / "blocks:R0,R1,..."), read into the
model's tome_r by `train.spec.read_config` for the padded and the packed model alike.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fast_ast_jax.models.ast import create_ast
from fast_ast_jax.train.config import default_config
from fast_ast_jax.train.spec import read_config

ROOT = Path(__file__).resolve().parents[1]

# train.py's flag definitions; prints the per-block r of the configured model.
SCRIPT = """
import json, sys
from absl import app, flags
from ml_collections import config_flags
config_flags.DEFINE_config_file("config", None, "config", lock_config=True)

def main(argv):
    from fast_ast_jax.train.spec import read_config
    from fast_ast_jax.train.task import build_model
    c = flags.FLAGS.config
    c.model.depth = 4
    print(json.dumps(build_model(read_config(c).model, num_classes=2).r_schedule()))

app.run(main)
"""


def run_flags(tmp_path, config_body: str, *flags: str) -> subprocess.CompletedProcess:
    config = tmp_path / "cfg.py"
    config.write_text("from fast_ast_jax.train.config import default_config\n\n"
                      "def get_config():\n    c = default_config()\n"
                      f"    {config_body}\n    return c\n")
    return subprocess.run([sys.executable, "-c", SCRIPT, f"--config={config}", *flags],
                          capture_output=True, text=True, cwd=ROOT)


def schedule(out: subprocess.CompletedProcess) -> list[int]:
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_schedules_from_config_file_and_flags(tmp_path):
    # Config file: a constant and each tagged form (the last block never merges).
    assert schedule(run_flags(tmp_path, "c.model.tome_r = 6")) == [6, 6, 6, 0]
    assert schedule(run_flags(tmp_path, 'c.model.tome_schedule = "ramp:6,-1"')) == [
        12, 8, 4, 0]
    assert schedule(run_flags(tmp_path, 'c.model.tome_schedule = "blocks:16,0"')) == [
        16, 0, 0, 0]
    # Command line, over the config file.
    assert schedule(run_flags(tmp_path, "pass", "--config.model.tome_r=5")) == [5, 5, 5, 0]
    assert schedule(run_flags(tmp_path, "pass",
                              "--config.model.tome_schedule=ramp:6,1.0")) == [0, 4, 8, 0]
    assert schedule(run_flags(tmp_path, "c.model.tome_r = 6", "--config.model.tome_r=0",
                              "--config.model.tome_schedule=blocks:3,2,1")) == [3, 2, 1, 0]


@pytest.mark.slow
def test_bad_schedules_are_clear_errors(tmp_path):
    both = run_flags(tmp_path, "c.model.tome_r = 6",
                     "--config.model.tome_schedule=ramp:6,-1")
    assert both.returncode != 0
    assert ("config.model.tome_r=6 and config.model.tome_schedule='ramp:6,-1' are both "
            "set; keep one") in both.stderr
    bad = run_flags(tmp_path, "pass", "--config.model.tome_schedule=16,-1.0")
    assert bad.returncode != 0
    assert "several values need a 'ramp:' or 'blocks:' tag" in bad.stderr


def test_the_reader_makes_the_schedule_one_field():
    c = default_config()
    c.model.update(depth=2, tome_schedule="blocks:4")
    fields = read_config(c).model.fields
    assert fields["tome_r"] == "blocks:4" and "tome_schedule" not in fields
    assert "size" not in fields and fields["width"] == 192  # None keeps the size's value
    assert create_ast("tiny", **fields).r_schedule() == [4, 0]
    with pytest.raises(ValueError, match=r"AST\.tome_r: ToMe schedule 'blocks:4,4,4'"):
        create_ast("tiny", **{**fields, "tome_r": "blocks:4,4,4"}).r_schedule()


def test_schedules_saved_as_lists_by_older_versions_load_as_they_meant():
    """Checkpoints of older versions stored a schedule as a JSON list: two values were
    ToMe's (r, inflection), any other count one r per block."""
    from fast_ast_jax.models.tome import parse_schedule
    from fast_ast_jax.checkpoints.store import model_fields_from_meta

    ramp = model_fields_from_meta({"model": {"tome_r": [16, -1.0], "depth": 4}})["tome_r"]
    assert ramp == "ramp:16,-1.0"
    assert parse_schedule(ramp, depth=4) == parse_schedule("ramp:16,-1", depth=4)
    blocks = model_fields_from_meta({"model": {"tome_r": [4, 2, 1]}})["tome_r"]
    assert blocks == "blocks:4,2,1" and parse_schedule(blocks, depth=4) == [4, 2, 1, 0]
    assert model_fields_from_meta({"model": {"tome_r": 8}})["tome_r"] == 8
