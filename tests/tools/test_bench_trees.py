"""The tree benchmark runs anyone's rerun of the scale figure: every step timed, the memory reported, the
trees configured by the config's `trees` section. It measures; it asserts no speed."""
from __future__ import annotations

import json

from melanoma.tools import bench_trees


def test_bench_reports_each_step_and_the_peak_memory(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench_trees.main(["--rows", "1500", "--patients", "12", "--positive-rate", "0.02",
                             "--set", "trees.max_iter=7", "--json", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == printed
    assert printed["rows"] == 1500 and printed["positives"] == 30 and printed["iterations"] == 7
    assert printed["trees"]["max_iter"] == 7 and printed["trees"]["max_leaf_nodes"] == 15  # base.yaml's
    assert printed["features"] > 150 and printed["categorical"] == 7
    assert printed["importance_validation_rows"] == 500 and printed["importance_rows"] == 500  # 1 of 3 folds, < 20,000
    assert printed["importance_sets"] > 60 and printed["importance_repeats"] == 1  # isic2024_tabular.yaml's
    for step in ("generate", "features", "matrix", "fit", "predict", "importance"):
        assert printed[f"{step}_seconds"] >= 0 and printed[f"{step}_resident_mb"] > 0
    assert printed["peak_resident_mb"] >= max(printed[f"{s}_resident_mb"] for s in ("fit", "predict")) - 1
    assert printed["command"].startswith("python -m melanoma.tools.bench_trees --rows 1500")


def test_bench_refuses_impossible_counts_and_unknown_keys(capsys):
    assert bench_trees.main(["--rows", "5", "--patients", "10"]) == 2
    assert "cannot give 10 patients" in capsys.readouterr().err
    assert bench_trees.main(["--rows", "100", "--set", "trees.maxiter=3"]) == 2
    assert "maxiter" in capsys.readouterr().err
