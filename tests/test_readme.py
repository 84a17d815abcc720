"""The README: its Python example runs as written (paths redirected to a temporary folder); its results are current."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README lost its Python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    assert (tmp_path / "out" / "resnet56-50" / "plan.json").exists()
    assert namespace["cost"].macs(namespace["keep"]) <= 0.5 * namespace["cost"].base_macs
    assert sum(p.numel() for p in namespace["net"].parameters()) < sum(p.numel() for p in namespace["model"].parameters())


def test_results_section_matches_the_results_files():
    """The README's figures are the committed results files' (benchmarks/readme_results.py), not hand-typed."""
    script = README.parent / "benchmarks" / "readme_results.py"
    proc = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
