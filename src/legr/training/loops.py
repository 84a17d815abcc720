"""Training loops: LeGR's short per-candidate fine-tune and the resumable full fine-tune.

>>> history = finetune(model, data.train_x, data.train_y, data.mean, data.std, FinetuneConfig(epochs=30),
...                    checkpoint=Path("ft.pt"), val=(data.test_x, data.test_y))
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from legr.data.stream import Loader, make_loader
from legr.errors import CheckpointError
from legr.models.checkpoint import load_state_dict
from legr.paths import atomic_file
from legr.progress import progress_bar
from legr.training.config import FinetuneConfig
from legr.training.distill import DistillConfig, Teacher, distill_loss
from legr.training.distributed import World, all_sum, barrier, check_batch, world, wrap
from legr.training.evaluate import Device, evaluate, model_device

CHECKPOINT_VERSION = 1


# ---------------------------------------------------------------- short fine-tune (LeGR search)


def make_sgd(model: nn.Module, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4,
             nesterov: bool = False) -> torch.optim.SGD:
    """SGD over the model's trainable parameters (weight decay on all of them, as in LeGR)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)


def cycle_batches(loader: Loader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The loader's batches forever: each exhaustion starts its next epoch."""
    if len(loader) == 0:
        raise ValueError("the loader yields no batches (fewer samples than batch_size with drop_last?)")
    while True:
        yield from loader


ExtraLoss = Callable[[nn.Module], torch.Tensor]  # model (after its forward on the batch) -> a scalar added to the loss


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor,
          teacher: Teacher | None = None, distill: DistillConfig | None = None,
          extra_loss: ExtraLoss | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on a batch (against ``teacher`` too with ``distill``; plus ``extra_loss(model)``, called right
    after the forward); returns the (detached) summed loss and number of correct top-1 predictions."""
    logits = model(xb)
    loss = F.cross_entropy(logits, yb) if teacher is None else distill_loss(logits, teacher(xb), yb, distill)
    if extra_loss is not None:
        loss = loss + extra_loss(getattr(model, "module", model))  # a DDP wrapper's network itself
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    correct = (logits.detach().argmax(dim=1) == yb).sum()
    return loss.detach() * len(yb), correct


def train_steps(model: nn.Module, loader: Loader, steps: int, optimizer: torch.optim.Optimizer) -> float:
    """Train ``model`` (in train mode) for exactly ``steps`` optimizer steps; returns the mean batch loss.

    The loader is cycled across epochs when ``steps > len(loader)``; each new pass is its next epoch. This is
    LeGR's tau-step fine-tune of a search candidate. ``steps == 0`` does nothing and returns nan.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if steps == 0:
        return math.nan
    model.train()
    total = None
    for _, (xb, yb) in zip(range(steps), cycle_batches(loader)):
        loss_sum, _ = _step(model, optimizer, xb, yb)
        batch_loss = loss_sum / len(yb)
        total = batch_loss if total is None else total + batch_loss
    return total.item() / steps


# ---------------------------------------------------------------- full fine-tune


def finetune(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mean: Sequence[float] | None,
             std: Sequence[float] | None, cfg: FinetuneConfig, *, checkpoint: str | os.PathLike | None = None,
             val: tuple[torch.Tensor, torch.Tensor] | None = None, progress: bool = True,
             device: Device = None, teacher: nn.Module | None = None,
             before_step: Callable[[int], None] | None = None,
             extra_loss: ExtraLoss | None = None) -> list[dict[str, Any]]:
    """Fine-tune ``model`` in place on (``x``, ``y``) with ``cfg``; returns one history row per epoch.

    Rows hold ``epoch``, ``lr``, ``train_loss``, ``train_top1`` (on the augmented batches), ``val_loss`` and
    ``val_top1`` when ``val`` = (images, labels) is given, and ``seconds``. The final-epoch weights are the result
    (no picking by accuracy); the model is left in eval mode. ``device`` None: the model's device (else the model
    is moved there).

    With ``checkpoint``, the full training state is saved atomically after every epoch, and a call finding that
    file resumes after its last epoch; the result is bit-identical to an uninterrupted run (on CPU, or with
    deterministic kernels on GPU). A finished checkpoint just loads its weights and returns its history. A
    checkpoint from another config or model raises ``CheckpointError``.

    With ``cfg.distill``, ``teacher`` (on ``device``, never changed) is distilled into the model; rows then also hold
    ``teacher_seconds``, its share of the epoch's time.

    ``before_step(step)`` is called before every optimizer step with its index from 0 (counted across epochs): a
    method that changes the network while it trains (GDP's masks) does it there; whatever it changes must live in the
    model's state (parameters, buffers) for a resumed run to match.

    Data-parallel (torch.distributed initialized, e.g. under torchrun: `legr.training.distributed`): every rank
    draws the same batches and trains on its equal share of each, DDP averages the gradients, the history is summed
    over the ranks and only rank 0 writes the checkpoint; ``cfg.batch_size`` must be a multiple of the world size.

    ``extra_loss(model)`` is called after every training forward and its value added to the batch's loss (a
    regularizer on what the forward computed, e.g. FBS's L1 penalty on the saliencies its gates stored); the
    history's ``train_loss`` includes it. It must be a function of the model's state and the batch only (a resumed
    run recomputes it); checkpoints do not record it.
    """
    if len(x) == 0:
        raise ValueError("finetune needs at least one training sample")
    if (cfg.distill is None) != (teacher is None):
        raise ValueError("finetune: a teacher goes with cfg.distill, and cfg.distill needs a teacher")
    device = torch.device(device) if device is not None else model_device(model)
    model.to(device)
    w = world()
    check_batch(cfg.batch_size, w)
    net = wrap(model, device, w)
    loader = make_loader(x, y, cfg.batch_size, mean, std, shuffle=True, augment=cfg.augment,
                         drop_last=len(x) > cfg.batch_size, seed=cfg.seed, device=device, shard=(w.rank, w.size))
    optimizer = make_sgd(model, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.nesterov)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, cfg.milestone_epochs(), cfg.gamma)
    history: list[dict[str, Any]] = []
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.exists():
        history = _resume(path, model, optimizer, scheduler, cfg)
    steps = len(loader) if cfg.steps_per_epoch is None else min(len(loader), cfg.steps_per_epoch)
    with progress_bar("fine-tune", cfg.epochs, done=len(history), enabled=progress and w.main) as advance:
        for epoch in range(len(history), cfg.epochs):
            start = time.perf_counter()
            guide = Teacher(teacher) if teacher is not None else None
            row = _train_epoch(net, loader, optimizer, epoch, steps, cfg.seed, device, guide, cfg.distill,
                               before_step, extra_loss, w)
            if guide is not None:
                row["teacher_seconds"] = guide.seconds
            if val is not None:
                result = evaluate(model, val[0], val[1], mean, std, device=device)
                row.update(val_loss=result.loss, val_top1=result.top1)
            scheduler.step()
            row["seconds"] = time.perf_counter() - start
            history.append(row)
            if path is not None and w.main:
                _save_checkpoint(path, model, optimizer, scheduler, cfg, history)
            barrier(w)  # no rank resumes from a checkpoint rank 0 is still writing
            advance(_row_text(row))
    model.eval()
    return history


def _train_epoch(model: nn.Module, loader: Loader, optimizer: torch.optim.Optimizer, epoch: int, steps: int,
                 seed: int, device: torch.device, teacher: Teacher | None = None,
                 distill: DistillConfig | None = None,
                 before_step: Callable[[int], None] | None = None,
                 extra_loss: ExtraLoss | None = None, w: World = World()) -> dict[str, Any]:
    """Train one epoch (at most ``steps`` batches); data order/augmentation and the global RNG seeded by epoch.
    Data-parallel (``w``): every rank draws the same global batch and trains on its shard; the row's figures are
    summed over the ranks."""
    lr = optimizer.param_groups[0]["lr"]
    model.train()
    loader.set_epoch(epoch)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    with _seeded_rng(_epoch_seed(seed, epoch), device):
        for i, (xb, yb) in zip(range(steps), loader):
            if before_step is not None:
                before_step(epoch * steps + i)
                model.train()
            batch_loss, batch_correct = _step(model, optimizer, xb, yb, teacher, distill, extra_loss)
            loss_sum += batch_loss.double()
            correct += batch_correct
            seen += len(yb)
    seen = int(all_sum(torch.tensor(seen, dtype=torch.int64, device=device), w).item())
    loss, right = all_sum(loss_sum, w).item(), all_sum(correct, w).item()
    return {"epoch": epoch, "lr": lr, "train_loss": loss / max(seen, 1), "train_top1": right / max(seen, 1)}


def _epoch_seed(seed: int, epoch: int) -> int:
    """Seed of the global RNG (dropout etc.) during ``epoch``: a function of (seed, epoch) only."""
    return int(np.random.SeedSequence([seed, epoch, 0x1E6]).generate_state(1, dtype=np.uint64)[0] >> 1)


@contextmanager
def _seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global CPU (and ``device``'s CUDA) RNG inside the block; the caller's RNG state is restored."""
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(cuda[0]):
                torch.cuda.manual_seed(seed)
        yield


# ---------------------------------------------------------------- checkpoints


def _save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: torch.optim.lr_scheduler.MultiStepLR, cfg: FinetuneConfig,
                     history: list[dict[str, Any]]) -> None:
    """Write the training state atomically (a killed run keeps its previous checkpoint)."""
    sched = scheduler.state_dict()
    sched["milestones"] = dict(sched["milestones"])  # a plain dict: loadable by every weights_only unpickler
    state = {"version": CHECKPOINT_VERSION, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": sched, "epoch": history[-1]["epoch"], "history": history, "cfg": cfg.state()}
    with atomic_file(path) as fh:
        torch.save(state, fh)


def _load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a fine-tune checkpoint with ``weights_only=True``; unreadable or foreign files raise CheckpointError."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"cannot read fine-tune checkpoint {path}: {reason}") from None
    keys = ("version", "model", "optimizer", "scheduler", "epoch", "history", "cfg")
    if not isinstance(state, dict) or any(k not in state for k in keys):
        raise CheckpointError(f"{path} is not a legr fine-tune checkpoint")
    if state["version"] != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: fine-tune checkpoint format {state['version']}, "
                              f"this legr reads {CHECKPOINT_VERSION}")
    return state


def _check_cfg(path: Path, saved: dict[str, Any], cfg: FinetuneConfig) -> None:
    """Raise CheckpointError naming the fields where the checkpoint's config differs from ``cfg``."""
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: the stored config is not a dict")
    current = cfg.state()
    names = list(current) + sorted(set(saved) - set(current))
    diffs = [f"{k}={saved.get(k, '<missing>')!r} vs {current.get(k, '<missing>')!r}" for k in names
             if saved.get(k, "<missing>") != current.get(k, "<missing>")]
    if diffs:
        raise CheckpointError(f"{path} was written with another FinetuneConfig ({', '.join(diffs)}); "
                              "use the same config or another checkpoint path")


def _check_optimizer(path: Path, saved: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
    """Raise CheckpointError if the saved optimizer state does not fit the optimizer's parameters."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    groups = saved.get("param_groups", [])
    sizes = [len(g.get("params", [])) for g in groups]
    if sizes != [len(g["params"]) for g in optimizer.param_groups]:
        raise CheckpointError(f"{path}: optimizer state has parameter groups of sizes {sizes}, the model "
                              f"{[len(g['params']) for g in optimizer.param_groups]}")
    for index, state in saved.get("state", {}).items():
        buf = state.get("momentum_buffer") if isinstance(state, dict) else None
        if not isinstance(index, int) or not 0 <= index < len(params) or (
                isinstance(buf, torch.Tensor) and buf.shape != params[index].shape):
            raise CheckpointError(f"{path}: optimizer state of parameter {index} does not fit the model")


def _resume(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: torch.optim.lr_scheduler.MultiStepLR, cfg: FinetuneConfig) -> list[dict[str, Any]]:
    """Restore model/optimizer/scheduler from ``path``; returns the history of the epochs already done."""
    state = _load_checkpoint(path)
    _check_cfg(path, state["cfg"], cfg)
    history = list(state["history"])
    if len(history) != state["epoch"] + 1 or len(history) > cfg.epochs:
        raise CheckpointError(f"{path}: inconsistent fine-tune checkpoint (epoch {state['epoch']}, "
                              f"{len(history)} history rows, {cfg.epochs} epochs)")
    _check_optimizer(path, state["optimizer"], optimizer)
    load_state_dict(model, state["model"], strict=True, source=str(path))
    try:
        optimizer.load_state_dict(state["optimizer"])
        sched = dict(state["scheduler"])
        sched["milestones"] = Counter(sched["milestones"])
        scheduler.load_state_dict(sched)
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot restore the optimizer/scheduler state ({exc})") from None
    return history


# ---------------------------------------------------------------- progress


def _row_text(row: dict[str, Any]) -> str:
    text = f"loss {row['train_loss']:.4f}  lr {row['lr']:.3g}"
    if "teacher_seconds" in row:  # what distillation costs: the teacher's forwards, in % of the epoch
        text += f"  teacher {100 * row['teacher_seconds'] / max(row['seconds'], 1e-9):.0f}% of the time"
    return text + (f"  val {100 * row['val_top1']:.2f}%" if "val_top1" in row else "")
