"""ONNX export of a (pruned) network, checked in onnxruntime against PyTorch.

Uses the classic TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``): it needs only the ``onnx``
package, whereas the torch.export-based exporter (the default since torch 2.9) also needs ``onnxscript``. A
physically pruned `torch.fx.GraphModule` exports like any module.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from legr.errors import LegrError
from legr.paths import atomic_write_bytes

INPUT_NAME = "input"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def _flatten(out: Any) -> list[torch.Tensor]:
    """The output tensors in the order the ONNX exporter lists them (nested tuples/lists/dicts flattened)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flatten(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _flatten(o)]
    raise LegrError(f"cannot export: the model returns a {type(out).__name__}, not tensors")


def _io_info(values: Sequence[Any]) -> list[dict[str, Any]]:
    """[{name, shape, dtype}] from onnxruntime NodeArg or onnx ValueInfoProto entries (symbolic dims as names)."""
    out = []
    for v in values:
        if hasattr(v, "type") and hasattr(v.type, "tensor_type"):  # onnx ValueInfoProto
            tt = v.type.tensor_type
            shape = [d.dim_param if d.dim_param else int(d.dim_value) for d in tt.shape.dim]
            import onnx

            dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name
        else:  # onnxruntime NodeArg
            shape = [d if isinstance(d, (int, str)) else None for d in v.shape]
            dtype = str(v.type).removeprefix("tensor(").removesuffix(")")
            dtype = {"float": "float32", "double": "float64"}.get(dtype, dtype)
        out.append({"name": v.name, "shape": shape, "dtype": dtype})
    return out


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silence file descriptor 1 for the block. The TorchScript exporter's C++ logger is left switched on by a
    torch bug (``setup_onnx_logging`` tests the function object ``_jit_is_onnx_log_enabled``, always true) and
    dumps the whole Torch IR graph to stdout when an operator cannot be exported."""
    fd = 1  # the C++ logger writes to the process's stdout whatever sys.stdout is
    try:
        saved: int | None = os.dup(fd)
    except OSError:
        saved = None
    if saved is None:  # no stdout descriptor: nothing to silence
        yield
        return
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), fd)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
            os.dup2(saved, fd)
            os.close(saved)


def _export_kwargs() -> dict[str, Any]:
    params = inspect.signature(torch.onnx.export).parameters
    kwargs: dict[str, Any] = {}
    if "dynamo" in params:  # torch >= 2.5; the default became True in 2.9 and then needs onnxscript
        kwargs["dynamo"] = False
    return kwargs


def export_onnx(
    model: nn.Module,
    input_size: Sequence[int],
    path: str | os.PathLike[str],
    *,
    opset: int = 17,
    batch_size: int = 1,
    dynamic_batch: bool = True,
    check: bool = True,
    atol: float = 1e-4,
    extra_inputs: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Export ``model`` for inputs of shape ``(batch, *input_size)`` to the ONNX file ``path`` (written atomically).

    The model is exported in eval mode under no_grad on a copy on the CPU (the caller's model and its mode are
    left untouched). Input is named ``input``; outputs ``output`` (or ``output0``, ``output1``... for several).
    With ``dynamic_batch`` the batch axis is symbolic (``batch``). With ``check`` the exported bytes are run in
    onnxruntime (CPUExecutionProvider) on a seeded random input (batch 2 when dynamic, else ``batch_size``) and
    compared with PyTorch; a max absolute difference above ``atol`` raises LegrError and nothing is written (an
    existing file at ``path`` is left as it was). The file is written only once the check passes.
    ``extra_inputs``: further inputs after ``input``, by name, of fixed shape (e.g. the probability layer's prior,
    `legr.engine.prior`): the model is called ``model(input, *extra_inputs.values())``, traced and checked at
    these values.

    Returns ``{"path", "max_abs_diff" (None without check), "opset", "inputs", "outputs"}``, where inputs/outputs
    are lists of ``{"name", "shape", "dtype"}`` (a dynamic batch dimension appears as "batch").
    """
    path = Path(path)
    input_size = tuple(int(s) for s in input_size)
    if not input_size or any(s < 1 for s in input_size):
        raise LegrError(f"export: input_size must be positive (C, H, W), got {input_size}")
    if batch_size < 1:
        raise LegrError(f"export: batch_size must be >= 1, got {batch_size}")

    try:
        net = copy.deepcopy(model).cpu().eval()  # the caller's module keeps its device and train/eval mode
    except Exception as exc:
        raise LegrError(f"export: cannot copy {type(model).__name__} to the CPU: {_one_line(exc)}") from exc
    param = next(net.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    gen = torch.Generator().manual_seed(0)
    example = torch.randn((batch_size, *input_size), generator=gen, dtype=dtype)
    extra = {name: t.detach().cpu() for name, t in (extra_inputs or {}).items()}

    with torch.no_grad():
        try:
            reference = _flatten(net(example, *extra.values()))
        except LegrError:
            raise
        except Exception as exc:
            raise LegrError(f"export: {type(model).__name__} fails on an input of shape "
                            f"{tuple(example.shape)}: {_one_line(exc)}") from exc
        names = ["output"] if len(reference) == 1 else [f"output{i}" for i in range(len(reference))]
        dynamic_axes = {n: {0: "batch"} for n in [INPUT_NAME, *names]} if dynamic_batch else None
        if INPUT_NAME in extra:
            raise LegrError(f"export: an extra input may not be named {INPUT_NAME!r} (the images')")
        buf = io.BytesIO()
        try:
            with warnings.catch_warnings(), _quiet_stdout():
                warnings.simplefilter("ignore")  # legacy-exporter deprecation, constant-folding notes, tracer
                torch.onnx.export(net, (example, *extra.values()), buf, input_names=[INPUT_NAME, *extra],
                                  output_names=names,
                                  opset_version=opset, dynamic_axes=dynamic_axes, do_constant_folding=True,
                                  **_export_kwargs())
        except ImportError as exc:
            raise LegrError(f"export needs the onnx package (pip install 'legr[onnx]'): {_one_line(exc)}") from exc
        except Exception as exc:
            raise LegrError(f"cannot export {type(model).__name__} to ONNX (opset {opset}): "
                            f"{type(exc).__name__}: {_one_line(exc)}") from exc
    data = buf.getvalue()
    info: dict[str, Any] = {"path": str(path), "max_abs_diff": None, "opset": opset}
    if not check:
        atomic_write_bytes(path, data)
        try:
            import onnx

            graph = onnx.load_from_string(data).graph
            initializers = {i.name for i in graph.initializer}
            info["inputs"] = _io_info([i for i in graph.input if i.name not in initializers])
            info["outputs"] = _io_info(list(graph.output))
        except ImportError:
            info["inputs"] = [{"name": n, "shape": None, "dtype": None} for n in [INPUT_NAME, *extra]]
            info["outputs"] = [{"name": n, "shape": None, "dtype": None} for n in names]
        return info

    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise LegrError("checking the export needs onnxruntime (pip install 'legr[onnx]'), or pass check=False") from exc
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise LegrError(f"onnxruntime cannot load the ONNX export of {type(model).__name__}: {_one_line(exc)}") from exc
    info["inputs"] = _io_info(session.get_inputs())
    info["outputs"] = _io_info(session.get_outputs())

    n = 2 if dynamic_batch else batch_size
    x = torch.randn((n, *input_size), generator=gen, dtype=dtype)
    with torch.no_grad():
        expected = [t.detach().cpu().numpy() for t in _flatten(net(x, *extra.values()))]
    try:
        got = session.run(None, {INPUT_NAME: x.numpy(), **{name: t.numpy() for name, t in extra.items()}})
    except Exception as exc:
        raise LegrError(f"onnxruntime fails to run the ONNX export of {type(model).__name__} on a batch of {n}: "
                        f"{_one_line(exc)}") from exc
    if len(got) != len(expected) or any(g.shape != e.shape for g, e in zip(got, expected)):
        raise LegrError(f"the ONNX export of {type(model).__name__} gives outputs of shapes "
                        f"{[tuple(g.shape) for g in got]}, PyTorch {[tuple(e.shape) for e in expected]}")
    diff = max((float(np.max(np.abs(g.astype(np.float64) - e.astype(np.float64)))) if e.size else 0.0
                for g, e in zip(got, expected)), default=0.0)
    info["max_abs_diff"] = diff
    if not np.isfinite(diff) or diff > atol:
        raise LegrError(f"the ONNX export of {type(model).__name__} disagrees with PyTorch: max abs difference "
                        f"{diff:.3g} > atol {atol:g} (batch {n}, onnxruntime CPU); {path} was not written")
    atomic_write_bytes(path, data)
    return info
