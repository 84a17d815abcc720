"""int8 for deployment: ONNX Runtime post-training static quantization of a network's ONNX export.

The deploy path people ship on CPUs: the exported fp32 graph is pre-processed (`quant_pre_process`: shape inference
and graph optimisation, which folds Conv+BN), then quantized statically in the QDQ format — int8 weights per output
channel, uint8 activations (x86's u8s8 kernels) whose ranges are calibrated on held-out *training* images. Every
figure of an int8 network is then measured in onnxruntime itself (`OnnxModule` makes a session look like a module, so
the project's `evaluate` and `measure_interleaved` time and score it exactly as they do PyTorch networks).
`calibration_batches` and `export_quantized` are what `legr quantize` and the ``int8`` stage of a chain share.

Known traps it reports rather than hides: a per-layer sensitivity (`sensitivity`: the accuracy regained by keeping
one layer in fp32) names the layers to leave out (`Int8Settings.exclude`) when the int8 drop is too large, as on
depthwise convs (onnxruntime issue 11415).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from legr.data import normalize
from legr.engine.export import export_onnx
from legr.errors import LegrError
from legr.paths import atomic_write_bytes

Calibration = Literal["minmax", "entropy", "percentile"]
QUANTIZED_OPS = ("Conv", "Gemm", "MatMul")  # the layers holding the MACs; the rest follows through QDQ pairs
# int8 weights and inputs, float outputs: a classifier's logits quantized to 256 levels tie on ~1% of CIFAR-10 test
# images (ResNet-20), and a tied top-1 is then decided by the argmax's tie rule, not the network
FLOAT_OUTPUT_OPS = ("Gemm", "MatMul")
FP32_FILE, INT8_FILE = "model.onnx", "model.int8.onnx"  # a network's deployed forms in its folder


@dataclass(frozen=True)
class Int8Settings:
    """How a network is quantized: the calibration method and how many held-out training images it sees, per-channel
    weights, ``reduce_range`` (7-bit weights: CPUs without VNNI saturate u8s8 products otherwise), the ONNX node names
    kept in fp32, and the top-1 drop above which the result is flagged and a per-layer sensitivity computed."""

    calibration: Calibration = "minmax"
    calibration_images: int = 512
    per_channel: bool = True
    reduce_range: bool = False
    exclude: tuple[str, ...] = field(default_factory=tuple)
    max_drop: float = 0.01

    def __post_init__(self) -> None:
        if self.calibration not in ("minmax", "entropy", "percentile"):
            raise LegrError(f"int8 calibration must be minmax, entropy or percentile, got {self.calibration!r}")
        if self.calibration_images < 1:
            raise LegrError(f"int8 calibration_images must be >= 1, got {self.calibration_images}")
        if not 0 <= self.max_drop <= 1:
            raise LegrError(f"int8 max_drop is a top-1 fraction in [0, 1], got {self.max_drop}")


def _ort() -> Any:
    try:
        import onnxruntime
        import onnxruntime.quantization  # noqa: F401  (the submodule is not imported by the package)
    except ImportError as exc:
        raise LegrError(f"int8 needs onnxruntime (pip install 'legr[onnx]'): {exc}") from exc
    return onnxruntime


def session(path: str | os.PathLike[str] | bytes, threads: int = 1) -> Any:
    """An onnxruntime CPU session with ``threads`` intra-op threads (1: the ops run on the calling thread, so the
    thread CPU clock times them) and full graph optimisation."""
    ort = _ort()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(path if isinstance(path, bytes) else str(path), options,
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise LegrError(f"onnxruntime cannot load {path if not isinstance(path, bytes) else 'the model'}: "
                        f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from exc


class OnnxModule(nn.Module):
    """An onnxruntime session behind a module's interface (one float32 input, the first output returned as a tensor):
    what `legr.training.evaluate` and `legr.engine.latency` take. It has no parameters; it runs on the CPU."""

    def __init__(self, path: str | os.PathLike[str], threads: int = 1) -> None:
        super().__init__()
        self.path, self.threads = Path(path), threads
        self.session = session(self.path, threads)
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().cpu().float().contiguous().numpy()})[0]
        return torch.from_numpy(out)


def quantizable_nodes(path: str | os.PathLike[str]) -> list[str]:
    """The names of the nodes of ``path`` that static quantization turns into int8 layers, in graph order."""
    import onnx

    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type in QUANTIZED_OPS]


class _Reader:
    """Calibration batches for onnxruntime (its `CalibrationDataReader` protocol: ``get_next`` until None)."""

    def __init__(self, input_name: str, batches: Sequence[np.ndarray]) -> None:
        self.input_name, self.batches = input_name, list(batches)
        self.it: Iterator[np.ndarray] = iter(self.batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.it, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        self.it = iter(self.batches)


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """onnxruntime.quantization logs a line per tensor and warns about pre-processing through `logging`."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def preprocess(fp32: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """onnxruntime's recommended pre-processing before quantization (symbolic shape inference, graph optimisation:
    Conv+BN folded), written atomically to ``out``."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    _ort()
    with tempfile.TemporaryDirectory() as tmp, _quiet_logging():
        staged = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(fp32), str(staged))
        except Exception as exc:
            raise LegrError(f"onnxruntime cannot pre-process {fp32} for quantization: {exc}") from exc
        atomic_write_bytes(out, staged.read_bytes())
    return Path(out)


def quantize(fp32: str | os.PathLike[str], out: str | os.PathLike[str], calibration: Sequence[np.ndarray],
             settings: Int8Settings = Int8Settings()) -> dict[str, Any]:
    """Quantize the (pre-processed) fp32 ONNX file ``fp32`` into ``out`` (QDQ, int8 weights, uint8 activations),
    calibrated on ``calibration`` (normalized float32 NCHW batches of held-out training images). Written atomically;
    an excluded name that is not a quantizable node is refused (a typo would silently quantize it).

    Returns ``{"path", "bytes", "quantized": [node names], "excluded": [node names], "settings"}``."""
    ort = _ort()
    q = ort.quantization
    nodes = quantizable_nodes(fp32)
    unknown = sorted(set(settings.exclude) - set(nodes))
    if unknown:
        raise LegrError(f"int8 exclude names no quantizable node of {fp32}: {', '.join(unknown)} "
                        f"(its {'/'.join(QUANTIZED_OPS)} nodes: {', '.join(nodes[:6])}{', ...' if len(nodes) > 6 else ''})")
    if not calibration:
        raise LegrError("int8 calibration needs at least one batch of images")
    method = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
              "percentile": q.CalibrationMethod.Percentile}[settings.calibration]
    input_name = session(fp32).get_inputs()[0].name
    with tempfile.TemporaryDirectory() as tmp, _quiet_logging():
        staged = Path(tmp) / "int8.onnx"
        try:
            q.quantize_static(str(fp32), str(staged), _Reader(input_name, calibration), quant_format=q.QuantFormat.QDQ,
                              per_channel=settings.per_channel, reduce_range=settings.reduce_range,
                              activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                              nodes_to_exclude=list(settings.exclude), calibrate_method=method,
                              extra_options={"CalibTensorRangeSymmetric": False,
                                             "OpTypesToExcludeOutputQuantization": list(FLOAT_OUTPUT_OPS)})
        except Exception as exc:
            raise LegrError(f"onnxruntime cannot quantize {fp32}: {type(exc).__name__}: {exc}") from exc
        data = staged.read_bytes()
    atomic_write_bytes(out, data)
    return {"path": str(out), "bytes": len(data), "quantized": [n for n in nodes if n not in settings.exclude],
            "excluded": list(settings.exclude), "settings": asdict(settings)}


def calibration_batches(x: torch.Tensor, mean: Sequence[float], std: Sequence[float], count: int, seed: int,
                        batch: int = 64) -> list[np.ndarray]:
    """``count`` images of ``x`` (uint8 NCHW *training* images: the test split chooses nothing) as normalized float32
    batches: a sample seeded by the run's seed, so a rerun calibrates on the same images, and not augmented, as
    inference sees them."""
    n = min(count, len(x))
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    return [normalize(x[idx[i:i + batch]], mean, std).numpy() for i in range(0, n, batch)]


def export_quantized(net: nn.Module, input_size: tuple[int, ...], folder: str | os.PathLike[str],
                     calibration: Sequence[np.ndarray], settings: Int8Settings = Int8Settings()) -> dict[str, Any]:
    """``net`` (CPU, eval mode) as deployed in ``folder``: exported and pre-processed to `FP32_FILE` (BN folded), then
    quantized to `INT8_FILE` (see `quantize`, whose dict it returns, plus ``fp32_path`` / ``fp32_bytes``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fp32 = folder / FP32_FILE
    with tempfile.TemporaryDirectory() as tmp:
        exported = export_onnx(net, input_size, Path(tmp) / "export.onnx")
        preprocess(exported["path"], fp32)
    info = quantize(fp32, folder / INT8_FILE, calibration, settings)
    return {**info, "fp32_path": str(fp32), "fp32_bytes": fp32.stat().st_size}


def sensitivity(fp32: str | os.PathLike[str], calibration: Sequence[np.ndarray], score: Callable[[Path], float],
                settings: Int8Settings = Int8Settings(), *, progress: Callable[[str], None] | None = None,
                ) -> list[dict[str, Any]]:
    """Per quantizable layer: ``score`` (e.g. validation top-1 in onnxruntime) of the network quantized with that
    layer also kept in fp32, against all of them quantized — the accuracy a layer's int8 costs. Sorted by that
    cost, largest first: the first names are the ones to add to ``exclude``."""
    with tempfile.TemporaryDirectory() as tmp:
        base_file = Path(tmp) / "all.onnx"
        quantize(fp32, base_file, calibration, settings)
        base = score(base_file)
        rows = []
        candidates = [n for n in quantizable_nodes(fp32) if n not in settings.exclude]
        for i, node in enumerate(candidates):
            one = Path(tmp) / f"{i}.onnx"
            quantize(fp32, one, calibration, replace(settings, exclude=(*settings.exclude, node)))
            value = score(one)
            rows.append({"node": node, "score": value, "regained": value - base})
            one.unlink()
            if progress:
                progress(f"int8 sensitivity {i + 1}/{len(candidates)}: {node} kept fp32 -> {value:.4f}")
    return sorted(rows, key=lambda r: -r["regained"])
