"""What predict and embed share, without a model: the main loop (error lines, the count of
failures, the exit status), the input arguments, and the result files they write, on
results made by hand (the commands end to end: tests/test_inference.py,
tests/test_pretrain_train.py)."""
from __future__ import annotations

import argparse
import csv
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from fast_ast_jax.file_commands import FileLoop, file_arguments, input_files
from fast_ast_jax.inference import FileResult, Scored
from fast_ast_jax.result_files import PredictionTable, write_embeddings
from fast_ast_jax.windows import ClipScores


def test_file_loop_reports_each_failure_and_counts_them(capsys):
    results = [FileResult(file="a.wav", top=[("x", 0.9)]),
               FileResult(file="b.wav", error="b.wav: cannot decode audio"),
               FileResult(file="c.wav", top=[("y", 0.8)])]
    loop = FileLoop(total=3)
    assert [r.file for r in loop(results)] == ["a.wav", "b.wav", "c.wav"]  # failed ones too
    assert loop.exit_status() == 1
    assert capsys.readouterr().err.splitlines() == ["error: b.wav: cannot decode audio",
                                                    "1 of 3 files failed"]
    loop = FileLoop(total=1)
    assert len(list(loop(results[:1]))) == 1 and loop.exit_status() == 0
    assert capsys.readouterr().err == ""


def _args(argv):
    parser = argparse.ArgumentParser()
    file_arguments(parser, checkpoint_help="workdir")
    return parser.parse_args([*argv, "--checkpoint", "w"])


def test_input_files_and_their_usage_errors(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    for name in ("b.wav", "a.flac", "notes.txt"):
        (tmp_path / "d" / name).write_bytes(b"")
    listed = tmp_path / "files.txt"
    listed.write_text("# a comment\n\nx.wav\n  y.ogg \n")
    got = input_files(_args([str(tmp_path / "d"), "--list", str(listed)]))
    assert got == [str(tmp_path / "d" / "a.flac"), str(tmp_path / "d" / "b.wav"),
                   "x.wav", "y.ogg"]
    for argv, message in (([], "error: no input: give audio files"),
                          (["--list", str(tmp_path / "nope.txt")], "nope.txt does not exist")):
        with pytest.raises(SystemExit) as e:
            input_files(_args(argv))
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and message in err


def test_prediction_tables(tmp_path):
    results = [FileResult(file="a.wav", top=[("x", 0.75), ("y", 0.25)], duration=1.5,
                          windows=[(0.0, 1.0, []), (0.5, 1.5, [])]),
               FileResult(file="b.wav", error="b.wav: file is empty")]
    for name in ("p.csv", "p.jsonl"):
        table = PredictionTable(tmp_path / name, top_k=2)
        for r in results:
            table.write(r)
        table.close()
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert rows[0] == {"file": "a.wav", "label_1": "x", "score_1": "0.75", "label_2": "y",
                       "score_2": "0.25", "duration_s": "1.500", "windows": "2", "error": ""}
    assert rows[1]["error"] == "b.wav: file is empty" and rows[1]["label_1"] == ""
    lines = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert lines[0] == {"file": "a.wav", "labels": ["x", "y"], "scores": [0.75, 0.25],
                        "duration_s": 1.5, "windows": 2, "error": None}
    assert lines[1]["error"] == "b.wav: file is empty" and lines[1]["labels"] == []
    with pytest.raises(ValueError, match=r"p\.txt: use a \.csv or \.jsonl file name"):
        PredictionTable(tmp_path / "p.txt", top_k=2)


def test_embedding_files_npz_and_parquet_agree(tmp_path):
    """The .npz and the .parquet (+ .tokens.parquet) of the same results: a file of two
    windows, one of one, and a failed one."""
    grid, width = (2, 3), 4
    rng = np.random.default_rng(0)

    def clip(windows):  # per window: (1 + N, W) = its embedding then its patch tokens
        outs = [rng.standard_normal((1 + grid[0] * grid[1], width)).astype(np.float32)
                for _ in range(windows)]
        return ClipScores(scores=np.mean([z[0] for z in outs], axis=0),
                          windows=[(0.5 * k, 0.5 * k + 1.0, z) for k, z in enumerate(outs)])

    results = [Scored(file="a.wav", duration=1.5, clip=clip(2)),
               Scored(file="bad.wav", error="bad.wav: cannot decode audio"),
               Scored(file="c.wav", duration=0.4, clip=clip(1))]
    paths = {suffix: write_embeddings(tmp_path / f"e{suffix}", results, tokens=True,
                                      grid=grid, width=width)
             for suffix in (".npz", ".parquet")}
    assert paths[".parquet"] == [str(tmp_path / "e.parquet"), str(tmp_path / "e.tokens.parquet")]
    with np.load(tmp_path / "e.npz") as d:
        assert d["files"].tolist() == ["a.wav", "c.wav"] and d["failed"].tolist() == ["bad.wav"]
        np.testing.assert_array_equal(d["embeddings"], [results[0].clip.scores,
                                                         results[2].clip.scores])
        assert d["tokens"].shape == (3, 6, width) and d["token_file"].tolist() == [0, 0, 1]
        npz_tokens = d["tokens"]
    rows = pq.read_table(tmp_path / "e.parquet").to_pylist()
    assert [r["file"] for r in rows] == ["a.wav", "bad.wav", "c.wav"]
    assert rows[1]["embedding"] is None and rows[1]["error"] == "bad.wav: cannot decode audio"
    np.testing.assert_array_equal(rows[2]["embedding"], results[2].clip.scores)
    windows = pq.read_table(tmp_path / "e.tokens.parquet")
    assert windows["file"].to_pylist() == ["a.wav", "a.wav", "c.wav"]
    assert windows["window"].to_pylist() == [0, 1, 0]
    tokens = windows["tokens"].combine_chunks().to_numpy_ndarray()
    assert tokens.shape == (3, *grid, width)
    np.testing.assert_array_equal(tokens.reshape(npz_tokens.shape), npz_tokens)
    with pytest.raises(ValueError, match=r"e\.csv: use a \.npz or \.parquet file name"):
        write_embeddings(tmp_path / "e.csv", results, tokens=False, grid=grid, width=width)
