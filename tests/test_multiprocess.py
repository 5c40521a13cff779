"""Multi-process training on one machine: 2 JAX processes x 2 CPU devices (gloo collectives),
as a 2-host pod would run (docs/MULTIHOST.md); padded runs, and a packed ElasticAST run with
distillation that equals the same run in one process."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from fast_ast_jax import checkpoints, teacher_logits
from fast_ast_jax.data import SyntheticSource, source_ids
from fast_ast_jax.train import loop, task
from fast_ast_jax.train.spec import read_config
from tests import xla_settings
from tests.helpers import load_config, packed_config

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

WORKER = """
import hashlib, json, os, sys
root, port, pid, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
sys.path.insert(0, root)
import jax
import numpy as np
# The documented launch (docs/MULTIHOST.md): environment + config.distributed=True, which
# calls jax.distributed.initialize with gloo CPU collectives.
os.environ.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                  JAX_PROCESS_ID=str(pid))
from absl import logging
logging.set_verbosity(logging.WARNING)
from fast_ast_jax.train import loop
from tests.helpers import load_config

def run(steps, workdir, evaluate=False):
    c = load_config("test")
    c.update(num_steps=steps, checkpoint_every=2, log_every=1)
    c.optim.schedule = "constant"  # runs of 2 and 4 steps share their first 2
    c.data.eval.num_examples = 12  # not a multiple of the batch: padded, masked
    if not evaluate:
        c.data.eval = {}
    c.distributed = True
    final = loop.train_and_evaluate(c, workdir)
    assert (jax.process_count(), jax.device_count(), jax.local_device_count()) == (2, 4, 2)
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(final["state"].params):
        digest.update(np.asarray(leaf).tobytes())  # replicated: every host has all of it
    return {"step": final["step"], "params": digest.hexdigest(),
            "eval_accuracy": final.get("eval_accuracy"),
            "eval_num_clips": final.get("eval_num_clips")}

result = {"first": run(2, out + "/resumed"), "resumed": run(4, out + "/resumed"),
          "straight": run(4, out + "/straight", evaluate=True)}

# SIGTERM on host 1 only, during step 3: both hosts save step 3 and stop together.
import signal
from fast_ast_jax.data.pipeline import Pipeline
iterate = Pipeline.iterate

def preempt_host_1(self, **kw):
    for k, item in enumerate(iterate(self, **kw)):
        if k == 2 and pid == 1 and self.train:
            os.kill(os.getpid(), signal.SIGTERM)
        yield item

Pipeline.iterate = preempt_host_1
result["preempted"] = run(8, out + "/preempted")
Pipeline.iterate = iterate

# Packed: each host packs its 2 of the 4 rows of every step; 1 step, then resumed for a 2nd.
from tests.helpers import packed_config
first = packed_config(out + "/teacher.npz")
first.update(distributed=True, num_steps=1)
first.data.eval = {}
assert loop.train_and_evaluate(first, out + "/packed")["step"] == 1
c = packed_config(out + "/teacher.npz")
c.distributed = True
final = loop.train_and_evaluate(c, out + "/packed")
if pid == 0:
    np.savez(out + "/packed_params.npz", **{jax.tree_util.keystr(k): np.asarray(v) for k, v
             in jax.tree_util.tree_flatten_with_path(final["state"].params)[0]})
result["packed"] = {"step": final["step"], "train_loss": final["train_loss"],
                    "table": [{k: v for k, v in row.items() if k != "clips_per_s"}
                              for row in final["eval_table"]]}  # timings differ per host

# data.auto_stats: each host takes the fbank statistics of half the clips; summed, they
# are the whole training set's, and both hosts' runs hold the same numbers.
c = load_config("test")
c.update(distributed=True, num_steps=1)
c.data.eval = {}
c.data.auto_stats = True
from fast_ast_jax.train.spec import read_config
from fast_ast_jax.train.task import split_source, with_auto_stats
run = read_config(c)
result["auto_stats"] = with_auto_stats(run, source=split_source(run, "train"),
                                       workdir=out + "/auto").frontend.to_dict()
assert loop.train_and_evaluate(c, out + "/auto")["step"] == 1
with open(f"{out}/result_{pid}.json", "w") as f:
    json.dump(result, f)
"""


def auto_config():
    c = load_config("test")
    c.data.auto_stats = True
    return c


def write_teacher(path) -> None:
    c = load_config("test_elastic")
    source = SyntheticSource(sample_rate=16000, **c.data.train)
    logits = np.random.default_rng(0).normal(size=(len(source), len(source.labels)))
    teacher_logits.save(path, ids=source_ids(source), logits=logits, labels=source.labels,
                        teacher={"model_class": "random"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_identically_and_resume(tmp_path):
    write_teacher(tmp_path / "teacher.npz")
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(ROOT), str(port), str(i),
                               str(tmp_path)], env=xla_settings.with_devices(2),
                              stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        outs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    results = [json.loads((tmp_path / f"result_{i}.json").read_text()) for i in range(2)]
    assert results[0] == results[1]  # same params (hash), steps and eval on both hosts
    r = results[0]
    assert r["first"]["step"] == 2 and r["resumed"]["step"] == 4
    assert r["resumed"]["params"] == r["straight"]["params"]  # resume is exact
    assert r["straight"]["eval_num_clips"] == 12.0
    # One writer: one set of checkpoint files and one metrics log for both processes.
    ckpts = tmp_path / "resumed" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["2", "4"]
    assert sorted(p.name for p in (ckpts / "4" / "state").glob("ocdbt.process_*")) == [
        "ocdbt.process_0", "ocdbt.process_1"]  # each host writes its shard files once
    steps = [json.loads(s)["step"] for s in
             (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
             if "train/loss" in s]
    assert steps == [1, 2, 3, 4]
    assert "resumed from step 2" in outs[0] and "resumed from step 2" not in outs[1]
    assert r["preempted"]["step"] == 3  # host 0 stopped with host 1 (no hang)
    assert sorted(p.name for p in (tmp_path / "preempted" / "checkpoints").iterdir()) == [
        "2", "3"]
    # The packed run on 2 hosts (1 step, then resumed) equals the packed run of 2 steps in
    # this one process (1 device).
    one = loop.train_and_evaluate(packed_config(str(tmp_path / "teacher.npz")),
                                  str(tmp_path / "packed_one"))
    two = r["packed"]
    assert "resumed from step 1 at data position" in outs[0]
    assert two["step"] == one["step"] == 2
    np.testing.assert_allclose(two["train_loss"], one["train_loss"], rtol=1e-4)
    assert [row["num_clips"] for row in two["table"]] == [
        row["num_clips"] for row in one["eval_table"]] == [8.0, 8.0]
    for a, b in zip(two["table"], one["eval_table"]):
        assert a["accuracy"] == pytest.approx(b["accuracy"])
    # auto_stats over 2 hosts: the single-process numbers (to the float32 fbank's
    # rounding, which differs between processes), in the checkpoint
    run = read_config(auto_config())
    single = task.with_auto_stats(run, source=task.split_source(run, "train"),
                                  workdir=tmp_path / "auto_one").frontend
    assert (r["auto_stats"]["mean"], r["auto_stats"]["std"]) == pytest.approx(
        (single.mean, single.std), rel=1e-6)
    saved = checkpoints.load(tmp_path / "auto").frontend
    assert (saved.mean, saved.std) == (r["auto_stats"]["mean"], r["auto_stats"]["std"])
    with np.load(tmp_path / "packed_params.npz") as params:
        flat = jax.tree_util.tree_flatten_with_path(one["state"].params)[0]
        diff = max(float(np.abs(params[jax.tree_util.keystr(k)] - v).max()) for k, v in flat)
        print(f"packed, 2 processes vs 1: max |param difference| {diff:.2e}, |loss "
              f"difference| {abs(two['train_loss'] - one['train_loss']):.2e}")
        for k, v in flat:
            # the tolerance of the 8-device test (tests/test_train.py)
            np.testing.assert_allclose(params[jax.tree_util.keystr(k)], v, rtol=1e-3,
                                       atol=2e-4)
