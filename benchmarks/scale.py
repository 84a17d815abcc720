"""Scale-out figures (issue 17): data-loader throughput streamed from disk vs in memory, the efficiency of
2-process data-parallel training on CPU, a 3-member family fine-tuned sequentially vs as Ray tasks, and LeGR's search
scored in this process vs by Ray tasks (CMA-ES generations; aging evolution with ``--workers`` children in flight).

    python benchmarks/scale.py [--images 5000] [--steps 40] [--workers 2] [--candidates 32]

Data: CIFAR-10-JPEG (``$LEGR_DATA/cifar10-jpeg.tar.gz``): its first ``--images`` training JPEGs written as an image
folder (32 px, the archive's own bytes), and 1,000 of them upscaled to 256 px JPEGs (ImageNet-size decoding and
transforms at 224). Model: cifar_resnet20 (akamaster weights, ``$LEGR_WEIGHTS``). Every process uses one thread.
Writes benchmarks/results/scale.json + .md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from legr.data import TensorLoader, load_dataset, make_loader
from legr.data.folder import iter_image_files
from legr.hardware import git_revision, hardware_info, hardware_label
from legr.models import build_model
from legr.paths import atomic_write_text, data_dir
from legr.training import FinetuneConfig, finetune

RESULTS = Path(__file__).parent / "results"


def write_trees(root: Path, images: int) -> tuple[Path, Path]:
    """An image folder of the archive's first ``images`` training JPEGs (+ 100 test ones), and one of 1,000 of them
    at 256 px."""
    small, big = root / "cifar32", root / "cifar256"
    need, counts = {"train": images, "test": 100}, {"train": 0, "test": 0}
    for parts, blob in iter_image_files(data_dir() / "cifar10-jpeg.tar.gz"):
        split, cls, name = parts[-3:]
        if counts == need:
            break
        if counts[split] == need[split]:
            continue
        counts[split] += 1
        (small / split / cls).mkdir(parents=True, exist_ok=True)
        (small / split / cls / name).write_bytes(blob)
        if counts[split] <= 1000:
            (big / split / cls).mkdir(parents=True, exist_ok=True)
            with Image.open(io.BytesIO(blob)) as im:
                im.convert("RGB").resize((256, 256), Image.BILINEAR).save(big / split / cls / name, quality=90)
    return small, big


def throughput(loader, epochs: int = 1) -> float:
    """Images per second over ``epochs`` of ``loader`` after one warm-up batch (normalized batches, as training
    sees them)."""
    next(iter(loader))
    start, seen = time.perf_counter(), 0
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for xb, _ in loader:
            seen += len(xb)
    return seen / (time.perf_counter() - start)


def loaders(small: Path, big: Path, workers: int) -> list[dict]:
    rows = []
    for label, tree, size in (("CIFAR-10-JPEG 32 px", small, None), ("CIFAR-10-JPEG upscaled, 224 px", big, 224)):
        memory = load_dataset("imagefolder", tree, image_size=size, stream=False)
        mem = throughput(TensorLoader(memory.train_x, memory.train_y, 128, memory.mean, memory.std, shuffle=True,
                                      augment=True))
        rows.append({"data": label, "loader": "in memory (TensorLoader)", "images_per_s": mem, "workers": 0})
        for w in sorted({0, workers}):
            streamed = load_dataset("imagefolder", tree, image_size=size, stream=True, workers=w)
            rate = throughput(make_loader(streamed.train_x, streamed.train_y, 128, memory.mean, memory.std,
                                          shuffle=True, augment=True))
            rows.append({"data": label, "loader": "streamed (StreamLoader)", "images_per_s": rate, "workers": w,
                         "ratio_to_memory": rate / mem})
        for row in rows[-3:]:
            print(f"{row['data']:32s} {row['loader']:26s} workers {row['workers']}: {row['images_per_s']:8.0f} img/s")
    return rows


CFG = FinetuneConfig(epochs=1, lr=0.01, batch_size=128, augment=True)


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("cifar_resnet20", num_classes=10)


def _ddp_worker(rank: int, world: int, folder: str, steps: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world)
    try:
        data = load_dataset("cifar10-jpeg")
        cfg = CFG.model_copy(update={"steps_per_epoch": steps})
        start = time.perf_counter()
        finetune(_net(), data.train_x, data.train_y, data.mean, data.std, cfg, progress=False)
        if rank == 0:
            Path(folder, "seconds").write_text(str(time.perf_counter() - start))
    finally:
        dist.destroy_process_group()


def data_parallel(steps: int) -> dict:
    """SGD steps of cifar_resnet20 at batch 128: one process vs two gloo processes with 64 images each."""
    torch.set_num_threads(1)
    data = load_dataset("cifar10-jpeg")
    start = time.perf_counter()
    finetune(_net(), data.train_x, data.train_y, data.mean, data.std,
             CFG.model_copy(update={"steps_per_epoch": steps}), progress=False)
    one = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(_ddp_worker, args=(2, folder, steps), nprocs=2, join=True)
        two = float(Path(folder, "seconds").read_text())
    row = {"model": "cifar_resnet20", "batch": 128, "steps": steps, "one_process_images_per_s": steps * 128 / one,
           "two_processes_images_per_s": steps * 128 / two, "efficiency": one / (2 * two)}
    print(f"data-parallel: 1 process {row['one_process_images_per_s']:.0f} img/s, 2 processes "
          f"{row['two_processes_images_per_s']:.0f} img/s: efficiency {row['efficiency']:.2f}")
    return row


FAMILY = """
model: {name: cifar_resnet20, weights: pretrained}
data: {name: cifar10-jpeg, val_size: 1000}
allocator: uniform
criterion: l1
targets: [0.3, 0.5, 0.7]
finetune: {epochs: 2, steps_per_epoch: STEPS, batch_size: 128}
eval: {latency: false}
seed: 0
"""


def family(steps: int, workers: int) -> dict:
    """A 3-member family's fine-tunes: in this process, one after another, vs as Ray tasks on ``workers`` CPUs."""
    import yaml

    from legr.pipeline.config import parse_config
    from legr.pipeline.ray_dispatch import RaySettings, finetune_on_ray
    from legr.pipeline.steps import Pipeline

    cfg = parse_config(yaml.safe_load(FAMILY.replace("STEPS", str(steps))))
    with tempfile.TemporaryDirectory() as root:
        alone, spread = Path(root) / "alone", Path(root) / "ray"
        Pipeline(cfg, alone, progress=False, log=lambda _: None).prune()
        shutil.copytree(alone, spread)
        start = time.perf_counter()
        Pipeline(cfg, alone, progress=False, log=lambda _: None).finetune()
        sequential = time.perf_counter() - start
        start = time.perf_counter()
        finetune_on_ray(Pipeline(cfg, spread, progress=False, log=lambda _: None), RaySettings(workers=workers))
        ray = time.perf_counter() - start
    row = {"members": 3, "steps_per_member": 2 * steps, "sequential_s": sequential, "ray_s": ray,
           "ray_workers": workers, "speedup": sequential / ray}
    print(f"family fine-tune: sequential {sequential:.0f} s, Ray with {workers} workers {ray:.0f} s "
          f"(x{row['speedup']:.2f}, Ray's start and each worker's opening of the run included)")
    return row


SEARCH = """
model: {name: cifar_resnet20, weights: pretrained}
data: {name: cifar10-jpeg, val_size: 1000}
search: {optimizer: OPT, normalize: NORM, population: 8, evaluations: EVALS, in_flight: FLIGHT, target: 0.5}
targets: [0.3, 0.5, 0.7]
eval: {latency: false}
seed: 0
"""


def search(evaluations: int, workers: int) -> list[dict]:
    """LeGR's search (one target, 50% MACs) scored here vs by Ray tasks on ``workers`` CPUs: CMA-ES (a generation of
    8 at once) and aging evolution with ``workers`` children in flight; both must end with the same ranking."""
    import yaml

    from legr.pipeline.config import parse_config
    from legr.pipeline.ray_dispatch import RaySettings, on_ray
    from legr.pipeline.steps import Pipeline

    rows = []
    for optimizer, norm in (("cma", "rank"), ("evolution", "none")):
        text = SEARCH.replace("OPT", optimizer).replace("NORM", norm).replace("EVALS", str(evaluations))
        cfg = parse_config(yaml.safe_load(text.replace("FLIGHT", str(workers if optimizer == "evolution" else 1))))
        with tempfile.TemporaryDirectory() as root:
            alone, spread = Path(root) / "alone", Path(root) / "ray"
            start = time.perf_counter()
            Pipeline(cfg, alone, progress=False, log=lambda _: None).rank()
            sequential = time.perf_counter() - start
            pipe = Pipeline(cfg, spread, progress=False, log=lambda _: None)
            start = time.perf_counter()
            with on_ray(pipe, RaySettings(workers=workers)):
                pipe.rank()
            ray = time.perf_counter() - start
            same = [json.loads((run / "ranking.json").read_text())["layers"] for run in (alone, spread)]
        rows.append({"optimizer": optimizer, "in_flight": cfg.search.in_flight, "candidates": evaluations,
                     "sequential_s": sequential, "ray_s": ray, "ray_workers": workers, "speedup": sequential / ray,
                     "same_ranking": same[0] == same[1]})
        print(f"search ({optimizer}, {evaluations} candidates): sequential {sequential:.0f} s, Ray with {workers} "
              f"workers {ray:.0f} s (x{sequential / ray:.2f}), same ranking: {same[0] == same[1]}")
    return rows


def markdown(result: dict) -> str:
    lines = [f"Hardware: {result['hardware']}; one thread per process.", "",
             "| data | loader | workers | images/s | vs in memory |", "|:---|:---|---:|---:|---:|"]
    for r in result["loaders"]:
        ratio = f"{r['ratio_to_memory']:.2f}x" if "ratio_to_memory" in r else "-"
        lines.append(f"| {r['data']} | {r['loader']} | {r['workers']} | {r['images_per_s']:.0f} | {ratio} |")
    d, f = result["data_parallel"], result["family"]
    lines += ["", f"Data-parallel SGD (cifar_resnet20, batch 128, {d['steps']} steps): 1 process "
              f"{d['one_process_images_per_s']:.0f} img/s, 2 gloo processes {d['two_processes_images_per_s']:.0f} "
              f"img/s: scaling efficiency {d['efficiency']:.2f}.", "",
              f"Family fine-tune (3 members x {f['steps_per_member']} SGD steps): sequential {f['sequential_s']:.0f} s, "
              f"Ray with {f['ray_workers']} workers {f['ray_s']:.0f} s (x{f['speedup']:.2f}; Ray's start and each "
              "worker's opening of the run included)."]
    lines += ["", "LeGR's search, one target (50% MACs), scored in this process vs by Ray tasks (the run's setup and "
              "Ray's start included; the two must end with the same ranking):", "",
              "| optimizer | children in flight | candidates | sequential s | Ray s | workers | speedup | "
              "same ranking |", "|:---|---:|---:|---:|---:|---:|---:|:---|"]
    lines += [f"| {r['optimizer']} | {r['in_flight'] if r['optimizer'] == 'evolution' else '-'} | {r['candidates']} | "
              f"{r['sequential_s']:.0f} | {r['ray_s']:.0f} | {r['ray_workers']} | {r['speedup']:.2f}x | "
              f"{'yes' if r['same_ranking'] else 'NO'} |" for r in result["search"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000, help="training images of the 32-px tree")
    parser.add_argument("--steps", type=int, default=40, help="SGD steps timed (data-parallel) and per member epoch")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers, and Ray's CPUs")
    parser.add_argument("--candidates", type=int, default=32, help="search candidates timed per optimizer")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as root:
        small, big = write_trees(Path(root), args.images)
        rows = loaders(small, big, args.workers)
    command = (f"benchmarks/scale.py --images {args.images} --steps {args.steps} --workers {args.workers} "
               f"--candidates {args.candidates}")
    result = {"command": command,
              "hardware": hardware_label(), "hardware_info": hardware_info(), "git": git_revision(),
              "loaders": rows, "data_parallel": data_parallel(args.steps), "family": family(args.steps, args.workers),
              "search": search(args.candidates, args.workers)}
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / "scale.json", json.dumps(result, indent=1) + "\n")
    atomic_write_text(RESULTS / "scale.md", markdown(result))


if __name__ == "__main__":
    main()
