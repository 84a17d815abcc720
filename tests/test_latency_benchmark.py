"""benchmarks/latency_uniform.py runs end to end (a smoke run; the timings themselves are the benchmark's): every
method is built at every target within its MACs budget, its MACs are torch's count, and every network is timed."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("latency_uniform", ROOT / "benchmarks" / "latency_uniform.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pruned_and_decomposed_networks_are_built_and_timed(tmp_path):
    script = _script()
    argv = ["--quick", "--no-pretrained", "--models", "cifar_resnet20", "--targets", "0.3", "0.6",
            "--methods", "uniform", "enc-model", "--batch-sizes", "1", "--threads", "1", "--attempts", "1",
            "--max-total-wait", "0", "--out-dir", str(tmp_path), "--stem", "smoke"]
    assert script.main(argv) == 0
    result = json.loads((tmp_path / "smoke.json").read_text())
    assert result["complete"] and result["settings"]["methods"] == ["uniform", "enc-model"]
    rows = result["models"][0]["targets"]
    assert sorted((r["method"], r["target"]) for r in rows) == [("enc-model", 0.3), ("enc-model", 0.6),
                                                                 ("uniform", 0.3), ("uniform", 0.6)]
    for r in rows:
        assert r["macs"] == r["macs_flop_counter"] and r["params"] == r["params_counted"]
        assert r["macs_ratio"] <= r["target"] + (0.02 if r["method"] == "uniform" else 0)  # ENC: from below
        assert r["latency"]["1"]["median_ms"] > 0 and r["efficiency"]["1"] > 0
    assert "| enc-model | 0.30 |" in (tmp_path / "smoke.md").read_text()


def test_an_unknown_method_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        _script().parse_args(["--methods", "svd"])
    assert exc.value.code == 2 and "invalid choice: 'svd'" in capsys.readouterr().err
