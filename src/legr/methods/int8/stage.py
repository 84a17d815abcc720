"""``method: [filters, int8]``: every member, after its fine-tuning, quantized statically in onnxruntime
(`legr.engine.int8`: QDQ, int8 weights, uint8 activations calibrated on the run's *training* images).

The stage's member is the int8 ONNX network itself (an `OnnxModule`), so the run's evaluation scores it in
onnxruntime on the test split and times it there; its figures keep the pruned network's MACs and params (int8
changes how they are stored, not how many there are: the budgets in those units still hold, a latency budget does
not) and add the file sizes and the validation top-1 of both ONNX forms (a drop above ``int8.max_drop`` is
flagged: `legr quantize MEMBER_DIR` then names the layers to keep in fp32). Its folder (``members/<name>/int8/``)
holds ``model.onnx`` (the fp32 network as deployed) and ``model.int8.onnx``, the file to ship; a finished member is
read back by opening that file, not quantized again. Nothing is fine-tuned after it (an ONNX graph does not train).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, model_validator
from torch import nn

from legr.engine import int8
from legr.errors import LegrError
from legr.methods.folders import MemberFolder
from legr.methods.stages import Member, Stage, register_stage
from legr.settings import Settings

_DEFAULT = int8.Int8Settings()


class Int8Section(Settings):
    """The run-config section ``int8: {...}`` of the stage (the fields of `legr.engine.int8.Int8Settings`)."""

    calibration: int8.Calibration = Field(_DEFAULT.calibration, description="activation ranges: minmax, entropy or "
                                                                            "percentile")
    calibration_images: int = Field(_DEFAULT.calibration_images, description="training images calibrated on")
    per_channel: bool = Field(_DEFAULT.per_channel, description="int8 weights per output channel")
    reduce_range: bool = Field(_DEFAULT.reduce_range, description="7-bit weights (CPUs without VNNI)")
    exclude: tuple[str, ...] = Field(_DEFAULT.exclude, description="ONNX node names kept in fp32")
    max_drop: float = Field(_DEFAULT.max_drop, description="validation top-1 drop (fp32 -> int8, in onnxruntime) "
                                                           "above which a member is flagged")

    @model_validator(mode="after")
    def _check(self) -> "Int8Section":
        self.settings()  # the engine's own checks, once, when the config is read
        return self

    def settings(self) -> int8.Int8Settings:
        """The engine's settings; its checks' `LegrError` as a validation error, so the config names the key."""
        try:
            return int8.Int8Settings(**self.model_dump())
        except LegrError as exc:
            raise ValueError(str(exc)) from None


INT8_CONFIG: dict[str, tuple[Any, Any]] = {"int8": (Int8Section, Int8Section())}


@register_stage
class Int8Stage(Stage):
    """int8 after the method (see the module doc): keeps MACs and params budgets, runs no fine-tuning after it."""

    name = "int8"
    description = "int8 post-training static quantization in onnxruntime (the member is the int8 ONNX network)"
    budgets = ("macs", "params")
    needs_finetune = False  # an ONNX graph does not train
    last = True  # nor does anything follow it
    config_keys = INT8_CONFIG

    def apply(self, member: Member, folder: MemberFolder) -> Member:
        """Quantize ``member.net`` into ``folder`` (calibrated on the run's training split, seeded by its seed)."""
        run, settings = self.run, self.run.cfg.int8.settings()
        x, _ = run.data.train
        calibration = int8.calibration_batches(x, run.data.mean, run.data.std, settings.calibration_images,
                                               run.cfg.seed)
        run.log(f"int8: quantizing {folder.root.parent.name} on {min(len(x), settings.calibration_images)} "
                "training images")
        with run.timed("int8"):
            info = int8.export_quantized(member.net, run.data.input_size, folder.root, calibration, settings)
        net = self._network(folder)
        figures = {**member.figures, "int8_bytes": info["bytes"], "onnx_bytes": info["fp32_bytes"],
                   **self._validation(net, folder, settings)}
        return Member(net, member.plan, figures, member.chain)

    def _validation(self, net: int8.OnnxModule, folder: MemberFolder, settings: int8.Int8Settings) -> dict[str, float]:
        """Validation top-1 of the fp32 and int8 ONNX networks (the same runtime: the drop is int8's alone), and a
        warning when int8 costs more than ``max_drop`` (the test split judges nothing)."""
        val = self.run.data.val
        if not len(val[0]):
            return {}
        fp32 = self.run.accuracy(self._network(folder, int8.FP32_FILE), val).top1
        q8 = self.run.accuracy(net, val).top1
        if fp32 - q8 > settings.max_drop:
            self.run.log(f"warning: {folder.root.parent.name}: int8 costs {100 * (fp32 - q8):.2f} points of validation "
                         f"top-1 (> max_drop {100 * settings.max_drop:g}); `legr quantize {folder.root.parent}` names "
                         "the layers to keep in fp32 (int8.exclude)")
        return {"onnx_val_top1": fp32, "int8_val_top1": q8}

    def save(self, net: nn.Module, folder: MemberFolder) -> None:
        """Nothing to add: `apply` wrote the network's files (``model.int8.onnx``) in the folder, and an ONNX graph
        has no weights to store beside it."""

    def load(self, previous: Member, folder: MemberFolder) -> Member:
        """The finished member's int8 file, opened (not quantized again)."""
        return Member(self._network(folder), previous.plan, previous.figures, previous.chain)

    def _network(self, folder: MemberFolder, file: str = int8.INT8_FILE) -> int8.OnnxModule:
        """A network of the folder in onnxruntime, with the evaluation's CPU threads (``eval.threads``, else
        torch's)."""
        threads, _ = self.run.cfg.latency_timing()
        return int8.OnnxModule(folder.root / file, threads or torch.get_num_threads())
