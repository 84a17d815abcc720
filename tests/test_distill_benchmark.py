"""benchmarks/distill_quantize.py: pieces merge into the CE / KD / int8 table, the KD arm reported is the one with the
best *validation* top-1 (not test), the missing pieces are named, and a bad config is refused before any work."""

import importlib.util
import json
from pathlib import Path

import pytest

from legr.errors import LegrError

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """
run:
  model: {name: digits_cnn, weights: null}
  data: {name: digits, val_size: 200}
  search: {restarts: 1, targets: [0.3, 0.6]}
  targets: [0.3, 0.6]
seeds: [0, 1]
arms:
  - {name: ce}
  - {name: kd-a, set: {finetune.distill: {alpha: 0.9, temperature: 4}}}
  - {name: kd-b, set: {finetune.distill: {alpha: 0.5, temperature: 2}}}
"""


def _script():
    spec = importlib.util.spec_from_file_location("distill_quantize", ROOT / "benchmarks" / "distill_quantize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _piece(results: Path, seed: int, arm: str, val: float, test: float) -> None:
    rows = [{"name": "baseline", "method": "baseline", "target": None, "top1": 0.99}]
    rows += [{"name": f"legr-{round(100 * t)}", "method": "legr", "target": t, "top1": test + t / 10,
              "int8_top1": test + t / 10 - 0.01, "onnx_cpu_b1_ms": 2.0 * t, "int8_cpu_b1_ms": t} for t in (0.3, 0.6)]
    piece = {"seed": seed, "arm": arm, "rows": rows, "val_top1": {"legr-30": val, "legr-60": val + 0.1},
             "hardware": "test machine"}
    (results / "pieces").mkdir(parents=True, exist_ok=True)
    (results / "pieces" / f"seed{seed}_{arm}.json").write_text(json.dumps(piece))


def test_merge_chooses_kd_on_validation_and_names_missing_pieces(tmp_path):
    script = _script()
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(CONFIG)
    cfg = script.read_config(cfg_path)
    _piece(tmp_path, 0, "ce", val=0.80, test=0.70)
    _piece(tmp_path, 1, "ce", val=0.82, test=0.72)
    _piece(tmp_path, 0, "kd-a", val=0.85, test=0.60)  # best on validation, worse on test: still the one reported
    _piece(tmp_path, 0, "kd-b", val=0.83, test=0.90)
    result = script.merge(cfg, tmp_path)
    assert result["chosen_kd"] == "kd-a"
    assert result["missing"] == [(1, "kd-a"), (1, "kd-b")]
    ce30 = result["arms"]["ce"]["0.3"]
    assert ce30["top1"][0] == pytest.approx(0.74) and ce30["top1"][1] == pytest.approx(0.01414, rel=1e-3)
    assert ce30["seeds"] == [0, 1] and ce30["int8_top1"][0] == pytest.approx(0.73)
    md = script.markdown(result)
    assert "kd-a (chosen on val)" in md and "**Missing pieces** (seed, arm): 1 kd-a, 1 kd-b" in md
    assert "| ce | 30% | 2 | 81.00 ± 1.41 | 74.00 ± 1.41 | 73.00 ± 1.41 | 0.6 / 0.3 | - |" in md


def test_a_bad_config_is_refused_before_any_work(tmp_path):
    script = _script()
    path = tmp_path / "cfg.yaml"
    path.write_text(CONFIG.replace("{name: ce}", "{name: plain}"))
    with pytest.raises(LegrError, match="the first one 'ce'"):
        script.read_config(path)
    path.write_text(CONFIG.replace("alpha: 0.9", "alpha: 9"))
    with pytest.raises(LegrError, match="finetune.distill.alpha"):
        script.read_config(path)
    assert script.main(["--config", str(path), "--merge", "--results", str(tmp_path / "r")]) == 2
