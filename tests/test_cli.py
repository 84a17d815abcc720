"""The command line: the demo pipeline end to end on a tiny budget, resume after SIGKILL, one-line errors (exit 2)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from legr.errors import LegrError

# one search per run keeps these subprocess tests short; restarts are tested in-process (test_search, test_pipeline)
TINY = """
model: {name: digits_cnn, weights: null}
data: {name: digits, val_size: 200}
base_training: {epochs: 3, lr: 0.05, batch_size: 64, augment: false}
search: {population: 6, sample: 3, evaluations: 24, tau: 4, batch_size: 64, bn_batches: 4, restarts: 1}
targets: [0.3, 0.6]
finetune: {epochs: 1, batch_size: 64, augment: false}
eval: {latency_repeats: 3, latency_warmup: 1, latency_batch_sizes: [1, 8]}
"""


def legr(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **kw.pop("env", {})}
    proc = subprocess.run([sys.executable, "-m", "legr.cli", *args], capture_output=True, text=True, env=env, **kw)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


DEMO_TINY = ["--set", "base_training.epochs=3", "--set", "search.population=6", "--set", "search.sample=3",
             "--set", "search.evaluations=12", "--set", "search.tau=4", "--set", "search.restarts=1",
             "--set", "targets=[0.3, 0.6]",
             "--set", "finetune.epochs=1", "--set", "eval.latency_repeats=3", "--set", "eval.latency_batch_sizes=[1, 8]"]


def test_demo_writes_the_family(tmp_path):
    out = tmp_path / "run"
    proc = legr("demo", "--out", str(out), "--quiet", *DEMO_TINY)
    rows = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in rows] == ["baseline", "legr-30", "legr-60"]
    base = rows[0]
    for row, target in zip(rows[1:], (0.3, 0.6)):
        assert row["macs"] <= target * base["macs"] and row["macs"] > 0.8 * target * base["macs"]
        assert row["params"] < base["params"] and row["latency_cpu_b1_ms"] > 0
    assert (out / "pareto.png").stat().st_size > 10_000 and (out / "results.csv").exists()
    assert (out / "report.html").stat().st_size > 500_000 and "report.html" in proc.stderr
    assert "legr-30" in proc.stdout and (out / "config.yaml").exists()
    # the same command again finds everything done and reproduces the table
    again = legr("demo", "--out", str(out), "--quiet", *DEMO_TINY)
    assert json.loads((out / "results.json").read_text())[1]["top1"] == rows[1]["top1"]
    assert again.stdout.splitlines()[2].split()[:2] == proc.stdout.splitlines()[2].split()[:2]
    # export a member to ONNX (checked against PyTorch in onnxruntime)
    legr("export", str(out / "members" / "legr-30"), str(tmp_path / "m.onnx"))
    assert (tmp_path / "m.onnx").stat().st_size > 1000


@pytest.mark.parametrize("family", [False, True], ids=["one-target", "family-fitness"])
def test_search_resumes_after_sigkill(config, tmp_path, family):
    sets = [] if family else ["--set", "search.target=0.3"]  # default: the fitness averages the run's targets
    reference = tmp_path / "reference"
    legr("rank", str(config), "--out", str(reference), "--quiet", *sets)
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "legr.cli", "rank", str(config), "--out", str(killed), "--quiet", *sets]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = killed / "search_state.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            if len(json.loads(state.read_text())["history"]) >= 8:
                break
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.05)
    assert proc.poll() is None, "the search finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "ranking.json").exists()
    legr("rank", str(config), "--out", str(killed), "--quiet", *sets)
    a = json.loads((reference / "ranking.json").read_text())
    b = json.loads((killed / "ranking.json").read_text())
    assert a["layers"] == b["layers"] and a["fingerprint"] == b["fingerprint"]
    assert a["search"]["best_fitness"] == b["search"]["best_fitness"]
    assert b["search"]["targets"] == ([0.3, 0.6] if family else [0.3])


def test_a_ranking_searched_at_other_targets_is_refused(config, tmp_path):
    """A run folder from before the family-aware default (search target unset meant the lowest target) is not
    silently reused by a config that now searches at all its targets."""
    out = tmp_path / "old"
    legr("rank", str(config), "--out", str(out), "--quiet", "--set", "search.target=0.3",
         "--set", "search.evaluations=6")
    held = (out / "config.yaml").read_text()
    assert "  target: 0.3\n" in held
    (out / "config.yaml").write_text(held.replace("  target: 0.3\n", "  target: null\n"))  # as the old version wrote it
    proc = legr("rank", str(config), "--out", str(out), "--quiet", "--set", "search.evaluations=6", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "was searched at 30% MACs but the config searches at 30%, 60%" in proc.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["run", "missing.yaml"], "config file not found"),
        (["analyze", "resnet_56"], "unknown model"),
        (["report", "nowhere"], "results"),
        (["export", "nowhere", "x.onnx"], "no plan.json"),
        (["latency", "digits_cnn", "--clock", "cpu", "--threads", "2"], "threads: 1"),
        (["latency", "digits_cnn", "--batch-size", "0"], "batch_size"),
        (["latency", "digits_cnn", "--method", "magnitude"], "method magnitude takes no latency budget"),
        (["latency", "digits_cnn", "--method", "bogus"], "unknown method 'bogus'"),
    ],
)
def test_errors_are_one_line_with_exit_code_2(args, message, tmp_path):
    proc = legr(*args, check=False, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_analyze_reports_barriers_and_the_prunable_share(tmp_path):
    """Issue 32: a model with ops legr cannot follow is analysed around them; `legr analyze` names each barrier and
    the share of the MACs a plan can shrink."""
    proc = legr("analyze", "timm:ecaresnet26t", cwd=tmp_path)
    out = " ".join(proc.stdout.split())
    assert "of the MACs in layers a plan can shrink" in out and "channel barrier(s)" in out
    assert "layer1.0.se.conv" in out and "Conv1d" in out


def test_analyze_prunes_through_global_response_norm(tmp_path):
    """Once refused in one line (its GRN had no channel rule), convnextv2 is analysed with no barrier at all."""
    proc = legr("analyze", "timm:convnextv2_atto", cwd=tmp_path)
    out = " ".join(proc.stdout.split())
    assert "of the MACs in layers a plan can shrink" in out and "channel barrier" not in out


# --- bring your own model (issue 32, item 5) ------------------------------------------------------------------------
USER_NET = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes, width, in_channels=1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


def build(num_classes, width=8, in_channels=1):
    return Net(num_classes, width, in_channels)


class Gated(Net):  # an op legr has no rule for (a cumulative sum over the channels): a channel barrier

    def forward(self, x):
        f = self.features
        x = torch.cumsum(f[3](f[2](f[1](f[0](x)))), 1)
        x = f[5](f[4](x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def build_gated(num_classes, width=8):
    return Gated(num_classes, width)


def not_a_module(num_classes):
    return "a string"
"""

FACTORY_RUN = """
model: {{factory: "{net}:build", kwargs: {{width: 8}}, weights: null}}
data: {{name: digits, val_size: 200}}
base_training: {{epochs: 2, lr: 0.05, batch_size: 64, augment: false}}
criterion: l1
allocator: uniform
bn_batches: 2
targets: [0.5]
finetune: {{epochs: 1, batch_size: 64, augment: false}}
eval: {{latency_repeats: 2, latency_warmup: 1, latency_rounds: 1, latency_batch_sizes: [1]}}
"""


@pytest.mark.parametrize("factory", ["build", "build_gated"], ids=["plain", "with-a-barrier"])
def test_run_prunes_a_model_from_the_users_own_file(factory, tmp_path):
    """`model: {factory: path/to/net.py:build, kwargs: ..}`: the user's architecture, defined in a file legr has
    never seen, goes through analyze -> prune -> fine-tune -> eval -> export; also with an op legr has no rule
    for (a channel barrier: the rest is pruned)."""
    net = tmp_path / "mine" / "net.py"
    net.parent.mkdir()
    net.write_text(USER_NET)
    config = tmp_path / "own.yaml"
    config.write_text(FACTORY_RUN.format(net=net).replace(":build", f":{factory}"))
    out = tmp_path / "run"
    legr("run", str(config), "--out", str(out), "--quiet", cwd=tmp_path)
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 2 and rows[1]["macs"] <= 0.5 * rows[0]["macs"] and rows[1]["params"] < rows[0]["params"]
    member = next((out / "members").iterdir())
    assert json.loads((member / "plan.json").read_text())["source"]["factory"] == f"{net}:{factory}"
    # exported from another folder: the plan's source rebuilds the architecture from the user's file
    legr("export", str(member), str(tmp_path / "m.onnx"), cwd=net.parent)
    assert (tmp_path / "m.onnx").stat().st_size > 1000


@pytest.mark.parametrize("model,message", [
    ('{factory: "no_such_pkg.models:build"}', "cannot import module 'no_such_pkg.models' (ModuleNotFoundError"),
    ('{factory: "NET:nowhere"}', "has no callable 'nowhere'"),
    ('{factory: "missing/net.py:build"}', "not found"),
    ('{factory: "NET:not_a_module"}', "returned str, not a torch.nn.Module"),
    ('{factory: "NET:build", kwargs: {in_channels: 3}}', "forward pass on an input of shape (2, 1, 8, 8) failed"),
    ('{factory: "NET:build", kwargs: {depth: 3}}', "raised TypeError"),
    ('{name: digits_cnn, factory: "NET:build"}', "a name or a factory, not both"),
], ids=["unimportable", "no-callable", "no-file", "not-a-module", "input-size", "bad-kwargs", "name-and-factory"])
def test_a_bad_model_factory_is_one_line(model, message, tmp_path):
    net = tmp_path / "net.py"
    net.write_text(USER_NET)
    config = tmp_path / "bad.yaml"
    lines = FACTORY_RUN.format(net=net).splitlines()
    config.write_text("\n".join(f"model: {model.replace('NET', str(net))}" if line.startswith("model:") else line
                                for line in lines))
    proc = legr("run", str(config), "--out", str(tmp_path / "run"), "--quiet", check=False, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())



def _user_module(tmp_path: Path) -> Path:
    """USER_NET as tmp_path/user_nets/nets.py: importable as ``user_nets.nets`` from tmp_path, or named as a file."""
    package = tmp_path / "user_nets"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(USER_NET)
    return package / "nets.py"


def _conv_macs(c_in: int, c_out: int, k: int, h: int, w: int) -> int:
    return c_in * c_out * k * k * h * w


@pytest.mark.parametrize("model,size", [("factory:NET:build", 32), ("factory:user_nets.nets:build", 16)],
                         ids=["file", "module"])
def test_analyze_takes_the_users_own_model(model, size, tmp_path):
    """`legr analyze factory:<file or module>:<callable> --input-size CxHxW --kwargs JSON`: the user's model is
    analysed at the given size (its MACs are the hand count of USER_NET's layers at that size)."""
    net = _user_module(tmp_path)
    proc = legr("analyze", model.replace("NET", str(net)), "--input-size", f"3x{size}x{size}", "--num-classes", "10",
                "--kwargs", '{"in_channels": 3, "width": 6}', cwd=tmp_path)
    out = " ".join(proc.stdout.split())
    assert "features.0 │ 6 │ 1 │ yes" in out and "features.3 │ 12 │ 1 │ yes" in out and "fc │ 10 │ 1 │ no" in out
    macs = _conv_macs(3, 6, 3, size, size) + _conv_macs(6, 12, 3, size, size) + 12 * 10
    assert f": {macs / 1e6:.2f}M MACs," in out and "2/3 groups prunable" in out


def test_latency_takes_the_users_own_model(tmp_path):
    net = _user_module(tmp_path)
    proc = legr("latency", f"factory:{net}:build", "--input-size", "1x8x8", "--num-classes", "4", "--probes", "3",
                "--check", "2", "-q", env={"LEGR_CACHE": str(tmp_path / "cache")})
    assert f"factory:{net}:build (" in proc.stderr and "full network" in proc.stderr
    assert "check on 2 new random allocations: median error" in proc.stderr


@pytest.mark.parametrize("args,message", [
    (["analyze", "factory:no_such_pkg.models:build", "--input-size", "1x8x8"], "cannot import module 'no_such_pkg"),
    (["analyze", "factory:NET:not_a_module", "--input-size", "1x8x8", "--num-classes", "4"],
     "returned str, not a torch.nn.Module"),
    (["latency", "factory:NET:build", "--input-size", "3x8x8", "--num-classes", "4"],
     "forward pass on an input of shape (2, 3, 8, 8) failed"),
    (["analyze", "factory:NET:build", "--input-size", "3x8x"], "expected positive whole numbers joined by 'x'"),
    (["latency", "factory:NET:build", "--num-classes", "4"], "a factory's model needs --input-size"),
    (["analyze", "factory:NET:build", "--input-size", "1x8x8", "--kwargs", "{width: 4}"], "is not JSON"),
    (["analyze", "factory:NET:build", "--input-size", "1x8x8", "--kwargs", "[4]"], "expected a JSON object"),
    (["analyze", "digits_cnn", "--kwargs", "{}"], "--kwargs are a factory's arguments"),
], ids=["unimportable", "not-a-module", "input-size-rejected", "bad-input-size", "no-input-size", "kwargs-not-json",
        "kwargs-not-an-object", "kwargs-without-factory"])
def test_analyze_and_latency_refuse_a_bad_own_model_in_one_line(args, message, tmp_path):
    net = _user_module(tmp_path)
    proc = legr(*(a.replace("NET", str(net)) for a in args), check=False, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1

def _entry_point() -> str:
    """The `legr` script pip installed (next to this interpreter, else on PATH)."""
    script = shutil.which("legr", path=str(Path(sys.executable).parent)) or shutil.which("legr")
    assert script, "the `legr` entry point is not installed: pip install -e ."
    return script


@pytest.mark.parametrize("args,message", [
    (["bogus"], "Error: No such command 'bogus'."),
    (["models", "--bogus"], "Error: No such option: --bogus"),
    (["run"], "Error: Missing argument 'config'."),
    (["export", "member"], "Error: Missing argument 'output'."),
    (["latency", "digits_cnn", "--batch-size", "x"], "Error: Invalid value for '--batch-size'"),
], ids=["unknown-command", "unknown-option", "missing-argument", "second-argument", "bad-value"])
def test_usage_errors_through_the_installed_entry_point(args, message, tmp_path):
    """Issue #30: recent typer raises its own copy of click's exceptions (typer._click), older typer click's; whichever
    raised it, a usage error is click's usage message (usage, hint, one error line) and exit code 2, no traceback.
    (Older click spells the argument 'CONFIG'.)"""
    proc = subprocess.run([_entry_point(), *args], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith(f"Usage: legr {args[0] if args[0] != 'bogus' else ''}".rstrip())
    assert lines[-1].lower().startswith(message.lower()) and len(lines) == 4


def test_version_through_the_installed_entry_point():
    from importlib.metadata import version

    proc = subprocess.run([_entry_point(), "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout == f"legr {version('legr')}\n" and proc.stderr == ""


def test_ctrl_c_exits_130_with_the_resume_hint(monkeypatch, capsys):
    """Recent typer turns Ctrl-C into an exit code that `main` used to drop (exit 0, no message)."""
    from legr import cli

    def interrupted(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "open_pipeline", interrupted)  # `legr rank` interrupted while it runs
    monkeypatch.setattr(sys, "argv", ["legr", "rank", "tiny.yaml"])
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 130 and "interrupted; rerun the same command" in capsys.readouterr().err


def test_bad_config_key_and_budget(config, tmp_path):
    proc = legr("run", str(config), "--out", str(tmp_path / "r"), "--set", "search.tua=1", check=False)
    assert proc.returncode == 2 and "unknown config key 'search.tua'" in proc.stderr
    proc = legr("prune", str(config), "--out", str(tmp_path / "r2"), "--set", "targets=[0.001]", check=False)
    assert proc.returncode == 2 and "smallest reachable" in proc.stderr
    # a second config in the same folder is refused instead of mixing two runs
    legr("rank", str(config), "--out", str(tmp_path / "r3"), "--set", "search.evaluations=6", "--quiet")
    proc = legr("rank", str(config), "--out", str(tmp_path / "r3"), check=False)
    assert proc.returncode == 2 and "different config" in proc.stderr
    # ... but evaluation settings may change on a finished run (e.g. trained on a GPU, timed on a CPU)
    legr("rank", str(config), "--out", str(tmp_path / "r3"), "--set", "search.evaluations=6",
         "--set", "eval.latency_repeats=2", "--set", "device=cpu", "--quiet")
    assert "latency_repeats: 2" in (tmp_path / "r3" / "config.yaml").read_text()


def test_any_criterion_with_any_allocator(config, tmp_path):
    """taylor + uniform: no search, members named after the allocator, the ranking file carries the scores."""
    out = tmp_path / "u"
    legr("prune", str(config), "--out", str(out), "--set", "allocator=uniform", "--set", "criterion=taylor", "--quiet")
    assert sorted(p.name for p in (out / "members").iterdir()) == ["uniform-30", "uniform-60"]
    ranking = json.loads((out / "ranking.json").read_text())
    assert ranking["allocator"] == "uniform" and ranking["criterion"] == "taylor"
    assert all(len(layer["scores"]) > 0 for layer in ranking["layers"])
    assert not (out / "search_state.json").exists() and "rank" in json.loads((out / "timings.json").read_text())
    plan = json.loads((out / "members" / "uniform-30" / "plan.json").read_text())
    assert plan["info"]["method"] == "uniform" and plan["info"]["criterion"] == "taylor"
    proc = legr("prune", str(config), "--out", str(tmp_path / "x"), "--set", "criterion=magic", check=False)
    assert proc.returncode == 2 and "unknown criterion 'magic'; available: bn_scale, fpgm, l1, l2sq, random, taylor, taylor_abs" \
        in proc.stderr
    listing = legr("methods").stdout
    assert "taylor" in listing and any("magnitude" in line and "params" in line for line in listing.splitlines())


def test_compare_refuses_a_run_config(config, tmp_path):
    proc = legr("compare", str(config), "--out", str(tmp_path / "c"), check=False)
    assert proc.returncode == 2 and "missing config key 'compare'" in proc.stderr


@pytest.mark.parametrize("where", ["under-a-file", "proc"])
@pytest.mark.parametrize("method", ["filters", "magnitude"])
def test_out_folder_that_cannot_be_created_is_one_line(config, tmp_path, where, method):
    """Issue #11: -o under a regular file or on a file system that takes no folders: exit 2, no traceback."""
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "run" if where == "under-a-file" else Path("/proc/legr-test/run")
    proc = legr("rank", str(config), "--set", f"method={method}", "--set", "magnitude.rounds=1", "--out", str(out),
                "--quiet", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "cannot create output folder" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("change,message", [("model.name=digits_cn", "unknown model"),
                                            ("model.weights=missing.safetensors", "checkpoint not found"),
                                            ("data.name=nowhere", "unknown dataset"),
                                            ("targets=[0.001]", "smallest reachable"),
                                            ("search.target=0.001", "smallest reachable"),
                                            ("data.val_size=0", "needs a validation split")])
def test_invalid_runs_are_refused_before_the_folder_is_claimed(config, tmp_path, change, message):
    """Issue #11: the model, its checkpoint, the data and the targets are checked before anything is written or
    trained, so the corrected config can run in the same folder."""
    out = tmp_path / "run"
    proc = legr("prune", str(config), "--out", str(out), "--set", change, check=False, cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_a_folder_whose_run_never_started_is_reused(config, tmp_path):
    """Issue #11: a folder holding only config.yaml (e.g. from a failed start) takes the corrected config."""
    from legr.pipeline.config_files import load_config
    from legr.pipeline.steps import Pipeline

    out = tmp_path / "run"
    Pipeline(load_config(config, {"seed": 5}), out, progress=False)
    assert "seed: 5" in (out / "config.yaml").read_text()
    Pipeline(load_config(config), out, progress=False)
    assert "seed: 0" in (out / "config.yaml").read_text()
    (out / "timings.json").write_text("{}")  # the run started: another config is now refused
    with pytest.raises(LegrError, match="different config"):
        Pipeline(load_config(config, {"seed": 5}), out, progress=False)


def test_unreachable_magnitude_target_is_refused_before_training(config, tmp_path):
    """Issue #11: a magnitude target beyond the sensitivity grid is refused from the shapes, before the source
    network is trained and the sensitivity analysed."""
    out = tmp_path / "run"
    proc = legr("prune", str(config), "--set", "method=magnitude", "--set", "magnitude.rounds=1", "--set",
                "targets=[1e-9]", "--out", str(out), "--quiet", check=False, timeout=120)
    assert proc.returncode == 2 and "beyond what the sensitivity grid allows" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not out.exists()


def test_legr_magnitude_is_gone_and_names_its_replacement():
    proc = legr("magnitude", "lenet_300_100", "--target", "12", "--out", "x", check=False)
    assert proc.returncode == 2 and "legr run" in proc.stderr and "method: magnitude" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not Path("x").exists()


def test_latency_measures_and_checks_a_latency_model(tmp_path):
    proc = legr("latency", "digits_cnn", "--probes", "3", "--check", "2", "-q",
                env={"LEGR_CACHE": str(tmp_path / "cache")})
    assert "full network" in proc.stderr and "check on 2 new random allocations: median error" in proc.stderr
    assert len(list((tmp_path / "cache" / "latency").glob("*.json"))) == 1
