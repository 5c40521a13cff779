"""benchmarks/input_pipeline.py --quick: every figure is measured and the load guard holds."""
from __future__ import annotations

import json

import pytest

from benchmarks import input_pipeline
from fast_ast_jax import bench
from fast_ast_jax.models.ast import create_ast


@pytest.mark.slow
def test_quick_run_measures_everything_and_writes(tmp_path, capsys):
    out = tmp_path / "r.json"
    results = input_pipeline.main(["--quick", "--out", str(out), "--allow-load"])
    text = capsys.readouterr().out
    assert "uptime before:" in text and "uptime after:" in text
    assert set(results["loader"]) == {f"{k}_workers{w}" for k in ("host_frontend",
                                                                   "decode_only")
                                      for w in (0, 1)}
    assert all(rate > 0 for rate in results["loader"].values())
    # --quick files are at 44.1 kHz: also measured after the one-off 16 kHz conversion
    converted = results["converted"]
    assert set(converted) == {"conversion", "decode_only_workers0", "decode_only_workers1",
                              "host_work_ratio"}
    assert converted["host_work_ratio"] == pytest.approx(
        converted["decode_only_workers0"] / results["loader"]["host_frontend_workers0"])
    rates = results["device_rates"]
    # ToMe at half the MACs: the smallest constant r that halves them (4-block AST-tiny)
    model = create_ast("tiny", depth=4, frames=128, fstride=10, tstride=10,
                       num_classes=input_pipeline.NUM_CLASSES)
    macs = lambda r: bench.ast_macs(model.clone(tome_r=r)).total
    assert macs(rates["tome_r"]) <= macs(0) / 2 < macs(rates["tome_r"] - 1)
    assert all(rates[k] > 0 for k in ("step_fp32", "step_tome", "step_fp32_wave_in",
                                       "frontend_alone"))
    assert results["frontend_share_of_step"]["step_fp32"] == pytest.approx(
        rates["step_fp32"] / rates["frontend_alone"])
    assert json.loads(out.read_text())["loader"] == results["loader"]


def test_results_are_refused_under_load(monkeypatch, tmp_path):
    assert bench.may_write(0.4, allow_load=False)
    assert not bench.may_write(2.0, allow_load=False)
    assert bench.may_write(2.0, allow_load=True)
    monkeypatch.setattr(bench.os, "getloadavg", lambda: (2.0, 2.0, 2.0))
    with pytest.raises(SystemExit, match="load average is 2.00 > 1.5"):
        input_pipeline.main(["--quick", "--out", str(tmp_path / "r.json")])
    assert not (tmp_path / "r.json").exists()
