"""Results rows: files round trip, CSV layout, validation, config hash, tables, Pareto front and plot."""

import csv
import hashlib
import json

import numpy as np
import pytest

from legr.errors import LegrError
from legr.reporting import (
    RESULTS_CSV,
    RESULTS_JSON,
    config_hash,
    format_table,
    markdown_table,
    pareto_front,
    plot_pareto,
    read_results,
    write_results,
)

HW = "Test CPU (2 threads), torch 2.x, CPU"


def _row(name, method, macs, params, top1, target=None, **extra):
    row = {"name": name, "method": method, "model": "cifar_resnet20", "dataset": "cifar10", "target": target,
           "macs": macs, "params": params, "top1": top1}
    row.update(extra)
    return row


@pytest.fixture
def rows():
    base_macs, base_params = 40.55e6, 269722
    out = [_row("baseline", "baseline", base_macs, base_params, 0.9163, top5=0.997, latency_cpu_b1_ms=2.9,
                latency_cpu_b64_ms=61.0, macs_ratio=1.0, hardware=HW, seed=0, git_rev="abc1234", path="")]
    for t, legr, uni, lat in [(0.2, 0.872, 0.855, 1.3), (0.45, 0.903, 0.893, 1.9), (0.8, 0.914, 0.909, 2.6)]:
        # keys deliberately in a scrambled order: the CSV must not depend on it
        out.append({"latency_cpu_b64_ms": 61 * t, "seed": 0, **_row(f"legr-{round(t * 100)}", "legr", base_macs * t,
                    int(base_params * t), legr, target=t), "hardware": HW, "latency_cpu_b1_ms": lat, "top5": 0.99,
                    "my_extra": "kept", "path": f"members/legr-{round(t * 100)}"})
        out.append(_row(f"uniform-{round(t * 100)}", "uniform", base_macs * t * 1.01, int(base_params * t), uni,
                        target=t, top5=0.99, latency_cpu_b1_ms=lat * 0.97, latency_cpu_b64_ms=60 * t, hardware=HW))
    return out


def test_write_read_round_trip(tmp_path, rows):
    json_path, csv_path = write_results(rows, tmp_path / "run")
    assert json_path == tmp_path / "run" / RESULTS_JSON and csv_path == tmp_path / "run" / RESULTS_CSV
    assert read_results(tmp_path / "run") == rows
    assert read_results(json_path) == rows
    assert json_path.read_text().startswith("[\n {\n")  # indent 1
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]  # no temp files left


def test_write_converts_numpy_and_nan(tmp_path, rows):
    rows[0]["macs"] = np.float64(rows[0]["macs"])
    rows[0]["params"] = np.int64(rows[0]["params"])
    rows[1]["loss"] = float("nan")
    write_results(rows, tmp_path)
    back = read_results(tmp_path)
    assert back[0]["macs"] == 40.55e6 and isinstance(back[0]["params"], int)
    assert back[1]["loss"] is None
    json.loads((tmp_path / RESULTS_JSON).read_text())  # strict JSON


def test_csv_header_order_and_values(tmp_path, rows):
    _, csv_path = write_results(rows, tmp_path)
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames
        table = list(reader)
    assert header == [
        "name", "method", "model", "dataset", "target",                   # identity
        "macs", "macs_ratio", "params", "top1", "top5",                   # metrics
        "latency_cpu_b1_ms", "latency_cpu_b64_ms",                        # latency, by device then batch
        "my_extra",                                                       # unknown keys
        "seed", "git_rev", "hardware", "path",                            # provenance
    ]
    assert len(table) == len(rows)
    assert table[0]["name"] == "baseline" and table[0]["target"] == "" and table[0]["my_extra"] == ""
    assert float(table[1]["macs"]) == rows[1]["macs"] and int(table[1]["params"]) == rows[1]["params"]
    assert float(table[1]["top1"]) == 0.872 and table[1]["my_extra"] == "kept"
    assert table[2]["path"] == "" and table[2]["hardware"] == HW  # missing key -> empty cell


def test_required_keys_validation(tmp_path, rows):
    broken = [dict(r) for r in rows]
    del broken[2]["top1"], broken[2]["macs"]
    (tmp_path / RESULTS_JSON).write_text(json.dumps(broken))
    with pytest.raises(LegrError, match=r"row 2 \('uniform-20'\) lacks macs, top1"):
        read_results(tmp_path)
    with pytest.raises(LegrError, match="uniform-20"):
        write_results(broken, tmp_path / "other")
    assert not (tmp_path / "other" / RESULTS_JSON).exists()


def test_read_errors(tmp_path):
    with pytest.raises(LegrError, match="no results file"):
        read_results(tmp_path)
    (tmp_path / RESULTS_JSON).write_text('[{"name": "a",')
    with pytest.raises(LegrError, match="corrupt"):
        read_results(tmp_path)
    (tmp_path / RESULTS_JSON).write_text('{"name": "a"}')
    with pytest.raises(LegrError, match="list of result rows"):
        read_results(tmp_path / RESULTS_JSON)


def test_config_hash_stable_and_order_independent():
    a = {"model": {"name": "cifar_resnet20", "weights": None}, "targets": [0.2, 0.5], "seed": 0}
    b = {"seed": 0, "targets": [0.2, 0.5], "model": {"weights": None, "name": "cifar_resnet20"}}
    h = config_hash(a)
    assert h == config_hash(b) == config_hash(json.loads(json.dumps(a)))
    assert len(h) == 12 and int(h, 16) >= 0
    canonical = '{"model":{"name":"cifar_resnet20","weights":null},"seed":0,"targets":[0.2,0.5]}'
    assert h == hashlib.sha256(canonical.encode()).hexdigest()[:12]
    assert config_hash({**a, "seed": 1}) != h
    assert config_hash({**a, "targets": [0.5, 0.2]}) != h  # list order matters


def test_pareto_front_hand_made():
    pts = [
        {"name": "A", "macs": 1, "top1": 0.50},
        {"name": "B", "macs": 2, "top1": 0.70},
        {"name": "C", "macs": 3, "top1": 0.65},  # dominated by B
        {"name": "D", "macs": 4, "top1": 0.80},
        {"name": "E", "macs": 4, "top1": 0.75},  # same x as D, worse
        {"name": "F", "macs": 5, "top1": 0.80},  # same y as D, more MACs
        {"name": "G", "macs": 2, "top1": 0.70},  # exact tie with B: kept
        {"name": "H", "macs": 6, "top1": 0.90},
        {"name": "I", "macs": None, "top1": 0.99},  # no x: ignored
        {"name": "J", "macs": 0.5, "top1": 0.40},
    ]
    assert [r["name"] for r in pareto_front(pts)] == ["J", "A", "B", "G", "D", "H"]
    lat = [{"name": n, "lat": x, "acc": y} for n, x, y in [("p", 3.0, 0.9), ("q", 1.0, 0.9), ("r", 2.0, 0.95)]]
    assert [r["name"] for r in pareto_front(lat, x="lat", y="acc")] == ["q", "r"]
    assert pareto_front([]) == []


def _check_png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_plot_pareto_writes_png(tmp_path, rows):
    path = plot_pareto(rows, tmp_path / "plots" / "pareto.png")
    _check_png(path)
    no_latency = [{k: v for k, v in r.items() if not k.startswith("latency")} for r in rows]
    _check_png(plot_pareto(no_latency, tmp_path / "one_panel.png", title="ResNet-20 on CIFAR-10"))
    _check_png(plot_pareto(rows[:1], tmp_path / "baseline_only.png"))
    with pytest.raises(LegrError):
        plot_pareto([], tmp_path / "empty.png")


def test_tables(rows):
    text = format_table(rows).splitlines()
    assert len(text) == len(rows) + 2
    assert text[0].split()[:3] == ["name", "MACs", "(M)"]
    for col in ("MACs %", "params (K)", "params %", "top-1 %", "top-5 %", "CPU b1 ms", "CPU b64 ms", "speedup"):
        assert col in text[0]
    assert text[2].startswith("baseline") and text[2].endswith("1.00x")
    assert "91.63" in text[2] and "40.55" in text[2] and "100.0" in text[2]
    assert f"{2.9 / 1.3:.2f}x" in text[3]  # legr-20 speedup
    assert len({len(line) for line in text[:2]}) == 1  # header and rule line up

    md = markdown_table(rows).splitlines()
    assert len(md) == len(rows) + 2
    ncols = md[0].count("|")
    assert all(line.startswith("|") and line.endswith("|") and line.count("|") == ncols for line in md)
    assert md[1].startswith("|:---|---:")
    assert md[2].startswith("| baseline | 40.55 | 100.0 |")


def test_tables_without_optional_columns():
    rows = [_row("baseline", "baseline", 1.2e5, 3.4e3, 0.95), _row("legr-50", "legr", 0.6e5, 1.7e3, 0.93, 0.5)]
    text = format_table(rows)
    assert " ms" not in text and "speedup" not in text and "top-5" not in text
    assert "0.120" in text and "50.0" in text
    assert format_table([]) == "(no results)"


def test_atomic_file_replaces_whole_or_not_at_all(tmp_path):
    from legr.paths import atomic_file

    path = tmp_path / "sub" / "results.json"
    with atomic_file(path) as fh:
        fh.write(b"first")
    with pytest.raises(RuntimeError):
        with atomic_file(path) as fh:
            fh.write(b"half of the second")
            raise RuntimeError("killed midway")
    assert path.read_bytes() == b"first" and [p.name for p in path.parent.iterdir()] == ["results.json"]
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)  # readable like any other output, not mkstemp's 0600
