"""The family's fine-tunes as Ray tasks (issue 17): on a local 2-CPU Ray, with one worker killed mid-task, the
members end with the weights of the sequential fine-tune."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from test_distributed import RUN as DISTRIBUTED_RUN

from legr.pipeline.config import parse_config
from legr.pipeline.steps import Pipeline

pytest.importorskip("ray")
pytestmark = pytest.mark.usefixtures("one_thread")

RUN = DISTRIBUTED_RUN.replace("finetune: {epochs: 2, lr: 0.01, batch_size: 64, augment: false}",
                              "finetune: {epochs: 8, lr: 0.01, batch_size: 64}")  # long enough to kill a worker midway


def _kill_once_after_an_epoch(out: Path, killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the first Ray worker seen fine-tuning a member once that member has a checkpoint (>= 1 epoch done)."""
    while not stop.is_set() and not killed:
        if any(out.glob("members/*/finetune.pt")):
            for proc in Path("/proc").iterdir():
                try:
                    if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(b"ray::finetune_member"):
                        os.kill(int(proc.name), signal.SIGKILL)
                        killed.append(int(proc.name))
                        return
                except OSError:
                    continue
        time.sleep(0.05)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the Ray worker in /proc")
def test_ray_finetunes_equal_the_sequential_ones_even_when_a_worker_dies(tmp_path):
    config, alone, spread = tmp_path / "run.yaml", tmp_path / "alone", tmp_path / "ray"
    config.write_text(RUN)
    Pipeline(parse_config(yaml.safe_load(RUN)), alone, progress=False, log=lambda _: None).prune()
    shutil.copytree(alone, spread)  # the same cut family, fine-tuned two ways
    Pipeline(parse_config(yaml.safe_load(RUN)), alone, progress=False, log=lambda _: None).finetune()

    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_once_after_an_epoch, args=(spread, killed, stop), daemon=True)
    killer.start()
    try:
        done = subprocess.run([sys.executable, "-m", "legr", "finetune", str(config), "--out", str(spread), "--quiet",
                               "--ray", "local"], capture_output=True, text=True, timeout=600,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    finally:
        stop.set()
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert killed, "no Ray worker was seen fine-tuning"
    out = done.stdout + done.stderr
    assert "fine-tuning 2 members as Ray tasks" in out and "legr-30 fine-tuned" in out and "legr-60 fine-tuned" in out
    for member in ("legr-30", "legr-60"):
        ours, theirs = (load_file(run / "members" / member / "model.safetensors") for run in (spread, alone))
        assert ours.keys() == theirs.keys()
        assert all(ours[k].equal(theirs[k]) for k in ours), member  # bit for bit, resumed after the kill included
        assert not (spread / "members" / member / "finetune.pt").exists()
    # a finished write leaves no temporary; the killed worker may have left the one it was writing (never read)
    assert not [p for p in spread.rglob(".*.tmp") if not p.name.startswith(".finetune.pt.")]


SEARCHED = DISTRIBUTED_RUN.replace("evaluations: 6", "evaluations: 11")  # identity + 2 uniform, 2 generations of 4


def _search_log(run: Path) -> list[dict]:
    """The search log without its timings (the only field allowed to differ)."""
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (run / "search_log.jsonl").read_text().splitlines()]


def _alone_and_on_ray(tmp_path: Path, text: str, step: str) -> tuple[Path, Path]:
    """Run ``step`` (finetune or rank) of the run ``text`` in this process and as `legr STEP --ray local`; the Ray run
    must succeed and say it scored candidates as Ray tasks. Returns (alone, on Ray) run folders."""
    config, alone, spread = tmp_path / "run.yaml", tmp_path / "alone", tmp_path / "ray"
    config.write_text(text)
    getattr(Pipeline(parse_config(yaml.safe_load(text)), alone, progress=False, log=lambda _: None), step)()
    done = subprocess.run([sys.executable, "-m", "legr", step, str(config), "--out", str(spread), "--quiet",
                           "--ray", "local"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "scoring candidates as Ray tasks" in done.stdout + done.stderr
    return alone, spread


def test_ray_scores_the_search_candidates_and_ends_with_the_sequential_ranking(tmp_path):
    """CMA-ES generations scored by Ray workers (each opens the run from its folder): the same candidates, scores,
    ranking and members as the search scoring them one by one in this process."""
    alone, spread = _alone_and_on_ray(tmp_path, SEARCHED, "finetune")
    ours, theirs = _search_log(spread), _search_log(alone)
    assert len(ours) == 11 and ours == theirs  # every candidate and its fitness, in the same order
    ranked = [json.loads((run / "ranking.json").read_text()) for run in (spread, alone)]
    assert ranked[0]["layers"] == ranked[1]["layers"]  # every layer's alpha, kappa and scores
    for member in ("legr-30", "legr-60"):
        a, b = (load_file(run / "members" / member / "model.safetensors") for run in (spread, alone))
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a), member


ASYNC = DISTRIBUTED_RUN.replace(  # aging evolution, 3 children always out: 3 asynchronous workers
    "search: {population: 4, sample: 2, evaluations: 6,",
    "search: {optimizer: evolution, normalize: none, in_flight: 3, population: 4, sample: 2, evaluations: 14,")


def test_ray_workers_breed_aging_evolution_asynchronously_and_end_with_the_sequential_ranking(tmp_path):
    """`legr rank --ray`: aging evolution with 3 children in flight, each a Ray task; the same candidates, scores and
    ranking as the same search scored one by one in this process."""
    alone, spread = _alone_and_on_ray(tmp_path, ASYNC, "rank")
    ours, theirs = _search_log(spread), _search_log(alone)
    assert len(ours) == 14 and ours == theirs and [r["parent"] for r in ours[4:]] != [None] * 10
    ranked = [json.loads((run / "ranking.json").read_text()) for run in (spread, alone)]
    assert ranked[0]["layers"] == ranked[1]["layers"]


def test_ray_and_torchrun_do_not_combine(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(RUN)
    done = subprocess.run([sys.executable, "-m", "legr", "finetune", str(config), "--out", str(tmp_path / "r"),
                           "--ray", "local"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"})
    assert done.returncode == 2
    assert "launch it as one process, not under torchrun" in done.stdout + done.stderr


def test_a_cluster_that_is_not_there_is_one_line(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(RUN.replace("evaluations: 6", "evaluations: 4").replace("epochs: 8", "epochs: 1"))
    done = subprocess.run([sys.executable, "-m", "legr", "finetune", str(config), "--out", str(tmp_path / "r"),
                           "--quiet", "--ray", "127.0.0.1:9"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2, done.stderr[-2000:]
    assert "cannot join the Ray cluster at '127.0.0.1:9': nothing answers there" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
