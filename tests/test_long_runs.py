"""Long runs in pieces (issue 29, benchmarks/README.md "Long runs"), on benchmarks/latency_accuracy.py: pieces merge
into the equal-latency table (latencies read against each piece's own timing of the source network) and the merge
names the missing pieces; a piece prints its estimated wall time before any work; a piece killed with SIGKILL and
run again resumes without redoing finished work."""

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from legr.errors import ConfigError, LegrError
from legr.pipeline.compare_config import CompareConfig
from legr.pipeline.config import parse_config
from legr.pipeline.pieces import merge, piece, piece_config

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "latency_accuracy.py"
KEY = "latency_cpu_b256_ms"

# digits_cnn's latency only falls with its width at a large batch (at batch 8 fixed costs keep it above 80%)
CONFIG = """
model: {name: digits_cnn, weights: null}
data: {name: digits, val_size: 200}
base_training: {epochs: 5, lr: 0.05, batch_size: 64, augment: false}
budget: {unit: latency, batch_size: 256, threads: 1, clock: cpu, statistic: min, probes: 8, rounds: 2}
search: {population: 3, sample: 2, evaluations: 5, restarts: 1, tau: 0, batch_size: 64}
targets: [0.7, 0.9]              # the floors reach ~35-70% of its latency (a small, noisy latency model)
finetune: {epochs: 1, batch_size: 64, augment: false}
eval: {latency_repeats: 2, latency_warmup: 1, latency_rounds: 1, latency_batch_sizes: [1], threads: 1}
compare:
  seeds: [0, 1]
  methods:
    - {name: uniform-l1, criterion: l1, allocator: uniform}
    - {name: legr, criterion: l2sq, allocator: legr}
    - {name: legr-macs, criterion: l2sq, allocator: legr, budget: macs, targets: [0.3, 0.5, 0.8]}
"""


def _script():
    spec = importlib.util.spec_from_file_location("latency_accuracy", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(method, seed, target, ms, top1):
    return {"method": method, "name": f"{method}-{round(100 * target)}", "seed": seed, "target": target,
            "budget": "macs" if method == "legr-macs" else "latency", "macs": 1e6 * target, "params": 1e5 * target,
            "top1": top1, "top1_before_ft": 0.1, "top1_after_bn": top1 - 0.05, KEY: ms, "path": "", "run": ""}


def _part(cfg, seeds, methods, source_ms, members):
    """A piece's compare.json as `Comparison.run` writes it (figures made up)."""
    pcfg = piece_config(cfg, piece(cfg, seeds, methods))
    base = {"method": "baseline", "name": "baseline", "seed": seeds[0], "target": None, "macs": 3e6,
            "params": 1.3e5, "top1": 0.99, KEY: source_ms, "path": "", "run": ""}
    return {"model": "digits_cnn", "dataset": "digits", "seeds": list(seeds), "hardware": "test machine",
            "search_targets": [0.7, 0.9], "config": pcfg.model_dump(mode="json"),
            "runs": [base, *(_row(*m) for m in members)], "widths": {"target": 0.7, "budget": "latency", "seed": 0,
                                                                      "layers": [], "original": {}, "methods": {}},
            "family_time_per_seed": {}, "searches": {}, "pipeline_cost": None}


def test_merge_reads_latency_against_each_pieces_source_and_names_missing_pieces(tmp_path, monkeypatch, capsys):
    """Seed 0 in two pieces timed in different sessions (the second saw everything twice as slow), seed 1 missing:
    every latency is read as a fraction of its own piece's source network, so uniform-l1 and legr measured at 5 ms
    of 10 ms (50%) are compared with legr-macs between its members at 8 and 12 ms of 20 ms (40% and 60%)."""
    config = tmp_path / "tiny.yaml"
    config.write_text(CONFIG)
    cfg = parse_config(yaml.safe_load(CONFIG), schema=CompareConfig)
    parts = {
        "seed0_uniform-l1+legr": _part(cfg, [0], ["uniform-l1", "legr"], 10.0, [
            ("uniform-l1", 0, 0.7, 5.0, 0.80), ("uniform-l1", 0, 0.9, 8.0, 0.90),
            ("legr", 0, 0.7, 5.0, 0.84), ("legr", 0, 0.9, 7.5, 0.93)]),
        "seed0_legr-macs": _part(cfg, [0], ["legr-macs"], 20.0, [
            ("legr-macs", 0, 0.3, 8.0, 0.80), ("legr-macs", 0, 0.5, 12.0, 0.90), ("legr-macs", 0, 0.8, 18.0, 0.96)]),
    }
    results = tmp_path / "results"
    (results / "pieces").mkdir(parents=True)
    for name, part in parts.items():
        (results / "pieces" / f"{name}.json").write_text(json.dumps(part))
    monkeypatch.setattr(sys, "argv", ["latency_accuracy.py", "--config", str(config), "--results", str(results),
                                      "--merge"])
    _script().main()
    out = capsys.readouterr().out
    assert "missing pieces (seed, method): 1 uniform-l1, 1 legr, 1 legr-macs" in out
    table = (results / "latency_accuracy.md").read_text()
    assert "**Missing pieces** (seed, method): 1 uniform-l1, 1 legr, 1 legr-macs." in table
    assert "| uniform-l1 | 70% | 50.0 | 5.00 | 80.00 ± 0.00 | 85.00 ± 0.00 | -5.00 ± 0.00 (1/1 seeds in range) |" in table
    assert "| uniform-l1 | 90% | 80.0 | 8.00 | 90.00 ± 0.00 | 94.00 ± 0.00 | -4.00 ± 0.00 (1/1 seeds in range) |" in table
    assert "| legr | 70% | 50.0 | 5.00 | 84.00 ± 0.00 | 85.00 ± 0.00 | -1.00 ± 0.00 (1/1 seeds in range) |" in table
    assert "| legr | 90% | 75.0 | 7.50 | 93.00 ± 0.00 | 93.00 ± 0.00 | 0.00 ± 0.00 (1/1 seeds in range) |" in table
    assert "| 30% | 40.0 | 80.00 ± 0.00 |" in table  # legr-macs's own members
    assert "5 candidates x 1 restart(s)" in table  # the settings every method ran with
    saved = json.loads((results / "latency_accuracy.json").read_text())
    assert saved["missing"] == [[1, "uniform-l1"], [1, "legr"], [1, "legr-macs"]]
    assert saved["pieces"] == sorted(parts)
    assert len(saved["rows"]) == 4 and (results / "accuracy_vs_latency.png").stat().st_size > 0
    assert json.loads((results / "compare.json").read_text())["pieces"] == 2
    # a piece run with other settings (e.g. a smaller search for one method's piece) is refused
    shrunk = json.loads(json.dumps(parts["seed0_legr-macs"]))
    shrunk["config"]["search"]["evaluations"] = 3
    with pytest.raises(ConfigError, match="other settings .*search.evaluations: 3"):
        merge(cfg, [parts["seed0_uniform-l1+legr"], shrunk])


def _lines(text):
    return [line for line in text.splitlines() if line.strip() and "━" not in line]


def test_a_piece_estimates_first_and_resumes_after_sigkill(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(CONFIG)
    work, results = tmp_path / "work", tmp_path / "results"
    cmd = [sys.executable, str(SCRIPT), "--config", str(config), "--work", str(work), "--results", str(results),
           "--seeds", "0", "--methods", "legr", "--allow-busy"]  # (the test may run beside other jobs)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LEGR_CACHE": str(tmp_path / "cache")}
    folder = work / "seed0_legr"
    run = folder / "seed0" / "legr"
    first = run / "members" / "legr-70" / "plan.json"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not first.exists():
        time.sleep(0.05)
    assert proc.poll() is None, f"the piece finished (or failed) before it could be killed: {proc.communicate()}"
    proc.send_signal(signal.SIGKILL)
    out = _lines(proc.communicate()[0])
    # the estimate comes first, before the source network is trained or anything else is done
    assert out[0].startswith("estimated wall time of piece seed0_legr: ~"), out[:3]
    assert re.search(r"\(search \d+ s, fine-tuning \d+ s, other \d+ s; timed now: a search candidate", out[0])
    assert any("training the source network" in line for line in out[1:])
    assert not (results / "pieces").exists()
    done = {p: p.stat().st_mtime_ns for p in (folder / "source" / "base" / "model.safetensors", run / "ranking.json",
                                              first)}
    latency_model = (run / "latency_model.json").read_text()
    rank_s = json.loads((run / "timings.json").read_text())["rank"]

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    out = _lines(again.stdout)
    assert out[0].startswith("estimated wall time of piece seed0_legr: ~") and "(search 0 s," in out[0]
    assert not any("training the source network" in line or "learning the ranking" in line for line in out)
    assert {p: p.stat().st_mtime_ns for p in done} == done  # the source, the search, the first cut: not redone
    assert json.loads((run / "timings.json").read_text())["rank"] == rank_s
    assert (run / "latency_model.json").read_text() == latency_model  # read back, not measured again
    assert len((run / "search_log.jsonl").read_text().splitlines()) == 5  # each candidate once
    part = json.loads((results / "pieces" / "seed0_legr.json").read_text())
    assert part["foreign_load"] is None or 0 <= part["foreign_load"]["mean"] <= part["foreign_load"]["max"] <= 1
    assert sorted((r["method"], r["target"]) for r in part["runs"] if r["method"] != "baseline") == [
        ("legr", 0.7), ("legr", 0.9)]


def test_a_piece_on_a_busy_machine_is_refused_with_one_line(tmp_path, monkeypatch):
    """Another job taking the CPUs: the piece does not start (its latencies would measure that job too)."""
    script = _script()
    monkeypatch.setattr(script, "foreign_load", lambda window_s: 0.5)
    with pytest.raises(LegrError, match=r"^the machine is busy: other processes use 50% of its CPUs; .*--allow-busy"):
        script.check_quiet(allow_busy=False)
    script.check_quiet(allow_busy=True)  # warns and runs
    monkeypatch.setattr(script, "foreign_load", lambda window_s: 0.05)
    script.check_quiet(allow_busy=False)


def test_the_load_probe_sees_another_process_take_a_core():
    from legr.hardware import LoadMonitor, foreign_load

    if foreign_load(0.1) is None:
        pytest.skip("no /proc/stat here")
    spin = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 3: pass"])
    try:
        with LoadMonitor(every_s=0.5) as load:
            busy = foreign_load(1.0)
    finally:
        spin.wait()
    cpus = os.cpu_count() or 1
    assert busy >= 0.6 / cpus  # a spinning process is at least 60% of one core
    summary = load.summary()
    assert summary["samples"] >= 1 and summary["max"] >= 0.6 / cpus
