"""``report.html`` (`legr report`): one self-contained offline page from a tiny real run on the bundled digits (its
points, table rows, intervals, widths and search read back from the page), and in a real headless Chromium: no
console errors, the charts drawn as SVG, the x-axis switch and the table's sorting."""

import json
import math
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from legr.cli import app
from legr.engine.plan import Plan
from legr.errors import LegrError
from legr.pipeline.config import parse_config
from legr.pipeline.steps import Pipeline
from legr.reporting import read_results
from legr.reporting.html import DATA_ID, REPORT_HTML, write_report_html
from legr.reporting.report_data import binomial_interval

CONFIG = """
model: {name: digits_cnn, weights: null}
data: {name: digits, val_size: 200}
base_training: {epochs: 2, lr: 0.05, batch_size: 64, augment: false}
search: {population: 4, sample: 2, evaluations: 6, batch_size: 64, bn_batches: 3}
bn_batches: 3
targets: [0.35, 0.7]
finetune: {epochs: 1, batch_size: 64, augment: false}
eval: {latency: true, latency_batch_sizes: [1], latency_repeats: 3, latency_warmup: 1, latency_rounds: 1}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    Pipeline(parse_config(yaml.safe_load(CONFIG)), out, progress=False, log=lambda _: None).run()
    result = CliRunner().invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert f"report: {out / REPORT_HTML}" in result.output.replace("\n", "")
    return out


class _Page(HTMLParser):
    """Every tag's attributes, the member table's body rows, the scripts' text."""

    def __init__(self):
        super().__init__()
        self.attrs, self.scripts, self.member_rows = [], [], 0
        self._table = self._body = False
        self._script = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.attrs.append((tag, attrs))
        if tag == "table":
            self._table = attrs.get("id") == "members"
        elif tag == "tbody":
            self._body = self._table
        elif tag == "tr" and self._body:
            self.member_rows += 1
        elif tag == "script":
            self._script = attrs

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = self._body = False
        elif tag == "script":
            self._script = None

    def handle_data(self, data):
        if self._script is not None:
            self.scripts.append((self._script, data))


def _parse(path):
    page = _Page()
    page.feed(path.read_text())
    data = [json.loads(text) for attrs, text in page.scripts if attrs.get("id") == DATA_ID]
    assert len(data) == 1
    return page, data[0]


def test_the_page_is_offline_and_holds_one_point_and_row_per_network(run):
    path = run / REPORT_HTML
    assert path.stat().st_size < 2_000_000
    page, data = _parse(path)
    rows = read_results(run)
    assert len(rows) == 3  # the source network and two members

    external = [(tag, k, v) for tag, attrs in page.attrs for k, v in attrs.items()
                if k in ("src", "href", "action", "data") and v and re.match(r"\s*(https?:)?//", v)]
    assert not external
    assert not [attrs for tag, attrs in page.attrs if tag == "script" and "src" in attrs]  # every script inline
    assert not [attrs for tag, attrs in page.attrs if tag == "link"]
    text = path.read_text()
    assert not re.search(r"""\bimport\s*(\(|[^;]*?\bfrom)\s*['"]https?:""", text)  # no module imports from a URL
    assert not re.search(r"@import|url\(\s*['\"]?https?:", text)  # nor stylesheets
    assert "vegaEmbed" in text and len(text) > 500_000  # the charting runtime itself is inlined

    points = data["datasets"]["points"]
    assert [p["name"] for p in points] == [r["name"] for r in rows]
    assert page.member_rows == len(rows)
    assert set(data["pareto"]) == {"macs", "params", "latency_cpu_b1_ms"}  # the x-axis switch
    for p, r in zip(points, rows):
        assert p["macs_m"] == pytest.approx(r["macs"] / 1e6) and p["top1"] == pytest.approx(100 * r["top1"])
        assert p["latency_cpu_b1_ms"] == pytest.approx(r["latency_cpu_b1_ms"])
    assert points[0]["top1_before_ft"] is None and points[1]["top1_before_ft"] == pytest.approx(
        100 * rows[1]["top1_before_ft"])


def test_the_intervals_are_binomial_on_the_test_set(run):
    from legr.data import load_dataset

    _, data = _parse(run / REPORT_HTML)
    rows = read_results(run)
    n = len(load_dataset("digits").test_y)
    assert {r["test_images"] for r in rows} == {n}
    for p, r in zip(data["datasets"]["points"], rows):
        k = round(r["top1"] * n)
        assert k / n == pytest.approx(r["top1"])
        # the Wilson score interval, by hand: (k + z^2/2 -+ z sqrt(k (n - k) / n + z^2 / 4)) / (n + z^2)
        z = 1.959963984540054
        half = z * math.sqrt(k * (n - k) / n + z * z / 4)
        assert p["top1_lo"] == pytest.approx(100 * (k + z * z / 2 - half) / (n + z * z), abs=1e-9)
        assert p["top1_hi"] == pytest.approx(100 * (k + z * z / 2 + half) / (n + z * z), abs=1e-9)
        assert p["top1_lo"] < p["top1"] < p["top1_hi"]
    assert binomial_interval(0.9, 100) == pytest.approx((0.8256, 0.9448), abs=5e-5)  # the textbook 90/100 case
    assert binomial_interval(1.0, 50)[1] == 1.0 and binomial_interval(0.0, 50)[0] == 0.0
    with pytest.raises(LegrError, match="positive number of test images"):
        binomial_interval(0.5, 0)


def test_widths_search_config_and_provenance(run):
    page, data = _parse(run / REPORT_HTML)
    rows = read_results(run)
    layers = data["datasets"]["layers"]
    assert layers and all(layer["source"] > 0 for layer in layers)
    widths = data["datasets"]["widths"]
    members = [r for r in rows if r["path"]]
    assert {w["member"] for w in widths} == {r["name"] for r in members}
    for r in members:
        plan = Plan.load(run / r["path"] / "plan.json")
        mine = {w["layer"]: w["kept"] for w in widths if w["member"] == r["name"]}
        assert sum(mine.values()) < sum(layer["source"] for layer in layers)  # a pruned member
        assert sorted(mine.values()) == sorted(len(v) for v in plan.keep.values())  # digits_cnn: a layer per group
    search = data["datasets"]["search"]
    assert len(search) == len((run / "search_log.jsonl").read_text().splitlines()) > 0
    assert data["search"] is not None and data["widths"] is not None
    text = (run / REPORT_HTML).read_text()
    assert rows[0]["hardware"] in text and rows[0]["git_rev"] in text
    assert "name: digits_cnn" in text  # config.yaml


def test_a_run_without_latency_search_or_intervals(run, tmp_path):
    rows = [{k: v for k, v in r.items() if not k.startswith("latency") and k != "test_images"}
            for r in read_results(run)]
    (tmp_path / "results.json").write_text(json.dumps(rows))
    _, data = _parse(write_report_html(tmp_path))
    assert set(data["pareto"]) == {"macs", "params"} and data["search"] is None and data["widths"] is None
    assert all(p["top1_lo"] is None for p in data["datasets"]["points"])
    with pytest.raises(LegrError, match="no results file"):
        write_report_html(tmp_path / "nowhere")


def test_widths_need_one_architecture_not_one_weights_file(run, tmp_path):
    """A member re-cut in another folder names another weights file: its widths are still drawn against the same
    architecture; members of different architectures are not."""
    from legr.reporting.report_data import member_widths

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    rows = read_results(copy)
    member = next(r for r in rows if r["path"])
    path = copy / member["path"] / "plan.json"
    plan = json.loads(path.read_text())
    path.write_text(json.dumps({**plan, "source": {**plan["source"], "weights": "/elsewhere/model.safetensors"}}))
    widths, why = member_widths(copy, rows)
    assert widths is not None and why == ""
    path.write_text(json.dumps({**plan, "source": {**plan["source"], "num_classes": 7}}))
    widths, why = member_widths(copy, rows)
    assert widths is None and "different source networks" in why


def _browser():
    """(chromium, chromedriver) paths, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if (binary := shutil.which(name)) and (driver := shutil.which("chromedriver")):
            return binary, driver
    return None


@pytest.fixture
def driver(monkeypatch):
    """Headless Chromium driven by selenium (skipped when none is installed), its console log kept."""
    found = _browser()
    if found is None:
        pytest.skip("no Chromium with chromedriver on PATH (Debian: apt-get install chromium chromium-driver)")
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1200,2400"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium manager: use the given browser and driver, download nothing
    chrome = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=found[1]))
    yield chrome
    chrome.quit()


def _rendered(driver, page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(page.resolve().as_uri())
    WebDriverWait(driver, 60).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-rendered"))


def test_the_page_in_a_real_browser(run, tmp_path, driver):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _rendered(driver, run / REPORT_HTML)
    rows = read_results(run)
    for chart in ("pareto", "widths", "search"):
        assert driver.find_elements(By.CSS_SELECTOR, f"#{chart} svg"), chart
    symbols = lambda: driver.find_elements(By.CSS_SELECTOR, "#pareto g.mark-symbol.role-mark path")  # noqa: E731
    assert len(symbols()) == len(rows)  # one point per network
    ActionChains(driver).move_to_element(symbols()[-1]).perform()  # hover: the network's figures
    tip = WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "vg-tooltip-element").text)
    assert rows[-1]["name"] in tip and "top-1 95% interval" in tip and "MACs (M)" in tip, tip
    driver.find_element(By.CSS_SELECTOR, "#axis input[value=latency_cpu_b1_ms]").click()
    WebDriverWait(driver, 30).until(lambda d: "CPU latency, batch 1 (ms)" in [
        t.text for t in d.find_elements(By.CSS_SELECTOR, "#pareto g.role-axis-title text")])
    assert len(symbols()) == len(rows)

    header = next(th for th in driver.find_elements(By.CSS_SELECTOR, "#members th") if th.text == "top-1 %")
    column = [th.text for th in driver.find_elements(By.CSS_SELECTOR, "#members th")].index("top-1 %")

    def top1s():
        return [float(tr.find_elements(By.TAG_NAME, "td")[column].get_attribute("data-value"))
                for tr in driver.find_elements(By.CSS_SELECTOR, "#members tbody tr")]

    header.click()
    assert top1s() == sorted(100 * r["top1"] for r in rows) and header.get_attribute("aria-sort") == "ascending"
    header.click()
    assert top1s() == sorted((100 * r["top1"] for r in rows), reverse=True)
    driver.save_screenshot(str(tmp_path / "report.png"))
    assert (tmp_path / "report.png").stat().st_size > 10_000
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_search_log_candidates(tmp_path):
    from legr.reporting.report_data import search_candidates

    assert search_candidates(tmp_path) == []  # no search
    lines = [{"index": 0, "fitness": -999.4, "best_fitness": -999.4, "restart": 0},
             {"index": 1, "fitness": 0.61, "best_fitness": 0.61, "restart": 0},
             {"index": 0, "fitness": None, "best_fitness": None, "restart": 1},
             {"index": 1, "fitness": 0.58, "best_fitness": 0.58, "restart": 1}]
    (tmp_path / "search_log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    got = search_candidates(tmp_path)
    assert [c["candidate"] for c in got] == [0, 1, 2, 3] and [c["restart"] for c in got] == [0, 0, 1, 1]
    assert [c["penalized"] for c in got] == [True, False, True, False]
    (tmp_path / "search_log.jsonl").write_text('{"index": 0, "fitness": 0.5}\n{"index": 1,\n')
    with pytest.raises(LegrError, match="line 2 is not JSON"):
        search_candidates(tmp_path)


def _compare_json(folder, runs):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "compare.json").write_text(json.dumps({
        "model": "m", "dataset": "d", "config": {"targets": [0.3, 0.6]}, "runs": runs,
        "widths": {"layers": ["a", "b"], "original": {"a": 8, "b": 16}, "methods": {"x": {"a": 4, "b": 8}}}}))


def _row(method, seed, target, macs, top1, **extra):
    return {"name": f"{method[0]}-{round(100 * target)}" if target else "baseline", "method": method,
            "seed": seed, "target": target, "macs": macs, "params": macs / 10, "top1": top1, "test_images": 1000,
            "run": f"seed{seed}/{method}", "path": "", **extra}


def test_a_comparison_page_draws_seeds_as_points_and_methods_as_their_means(tmp_path):
    """`legr report` on a comparison folder (compare.json, no results.json): one point per seed's network and the
    source once, the seed means ± std per method and target (their Pareto front), the widths per method, and the
    one-line answer read from the means."""
    from legr.reporting.html import best_within
    from legr.reporting.report_data import comparison_data

    runs = [_row("baseline", 0, None, 100.0, 0.90), _row("baseline", 1, None, 100.0, 0.90)]
    for seed, (x30, x60, y30, y60) in enumerate([(30, 60, 0.80, 0.895), (30, 60, 0.84, 0.885)]):
        runs += [_row("x", seed, 0.3, x30, y30), _row("x", seed, 0.6, x60, y60),
                 _row("y", seed, 0.3, x30, y30 - 0.1), _row("y", seed, 0.6, x60, y60 + 0.01)]
    _compare_json(tmp_path / "cmp", runs)
    data = comparison_data(tmp_path / "cmp")
    assert [p["name"] for p in data.points][:2] == ["source network", "x-30 (seed 0)"]
    assert len(data.points) == 1 + 8  # the source once (every piece times its own), every seed's member
    means = {(m["method"], m["target"]): m for m in data.means}
    assert means["x", 0.3]["top1"] == pytest.approx(82.0) and means["x", 0.3]["seeds"] == 2
    assert means["x", 0.3]["top1_std"] == pytest.approx(math.sqrt(8.0))  # sample std of 80 and 84
    assert means["x", 0.3]["top1_hi"] - means["x", 0.3]["top1_lo"] == pytest.approx(2 * math.sqrt(8.0))
    assert means["y", 0.6]["front_macs"] and means["x", 0.3]["front_macs"] and not means["y", 0.3]["front_macs"]
    assert data.widths == {"layers": ["a", "b"], "source": {"a": 8, "b": 16}, "members": {"x": {"a": 4, "b": 8}}}
    line = best_within(data)  # within 1 pt of 90%: x and y at 60% (89.0 and 90.0); x at 30% is 82 (not)
    assert "x at 60% (mean of 2 seeds)" in line and "MACs (M)" in line and "60%" in line, line

    result = CliRunner().invoke(app, ["report", str(tmp_path / "cmp")])  # the CLI on a comparison's folder
    assert result.exit_code == 0, result.output
    page = tmp_path / "cmp" / REPORT_HTML
    assert page.is_file() and not (tmp_path / "cmp" / "pareto.png").exists()
    parsed, payload = _parse(page)
    assert parsed.member_rows == 9 and len(payload["datasets"]["means"]) == 4
    assert "means" in json.dumps(payload["pareto"]["macs"])  # the means' layers are drawn
    runs[2]["top1"] = 0.5  # no member within 1 pt: said so
    _compare_json(tmp_path / "none", [r for r in runs if r["method"] == "baseline" or r["top1"] < 0.889])
    assert "No compressed network is within 1 pt" in best_within(comparison_data(tmp_path / "none"))
    with pytest.raises(LegrError, match="no compare.json"):
        comparison_data(tmp_path)


def test_the_page_answers_which_network_is_cheapest_within_one_point(run):
    rows = read_results(run)
    source = next(r for r in rows if r["method"] == "baseline")
    close = [r for r in rows if r is not source and r["top1"] >= source["top1"] - 0.01]
    text = (run / REPORT_HTML).read_text()
    if close:
        best = min(close, key=lambda r: r["latency_cpu_b1_ms"])  # the first latency axis
        assert f"by CPU latency, batch 1 (ms): {best['name']}," in text
    else:
        assert "No compressed network is within 1 pt" in text


def test_a_comparison_page_in_a_real_browser(tmp_path, driver):
    """Every seed's point and every mean's diamond drawn, the charts without console errors."""
    from selenium.webdriver.common.by import By

    runs = [_row("baseline", 0, None, 100.0, 0.90)] + [
        _row(m, seed, t, 100 * t, 0.8 + t / 10 + seed / 100) for m in ("x", "y") for seed in (0, 1) for t in (0.3, 0.6)]
    _compare_json(tmp_path / "cmp", runs)
    _rendered(driver, write_report_html(tmp_path / "cmp"))
    shapes = [p.get_attribute("d") for p in driver.find_elements(By.CSS_SELECTOR, "#pareto g.mark-symbol.role-mark path")]
    assert len(shapes) == len(runs) + 4  # one point per network and one diamond per method and target
    assert driver.find_elements(By.CSS_SELECTOR, "#widths svg")
    assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
