"""The dense model in the dense inference engines a deployment would use: ONNX Runtime and OpenVINO.

The channel-skipping engine's speedup is only worth claiming against the fastest way to run the
dense model on a CPU, and PyTorch eager is not it: a deployment exports the model to ONNX and runs
it in ONNX Runtime or OpenVINO, which fuse BN and ReLU into the convolutions and pick their own
weight layouts and kernels (issue 13). This module exports the plain ResNet once and wraps each
engine as ``f(x: Tensor) -> Tensor``, so that ``manidp.latency`` times it beside the others.

Both engines are optional (``pip install -e .[bench]``); neither the tests nor the DAG need them.
:func:`build` returns the engines it could set up and, for each one it could not, why.

Settings, chosen so that the comparison is like for like with the engine at the same thread count:

- ONNX Runtime: CPU execution provider, every graph optimisation (``ORT_ENABLE_ALL``: BN folding,
  Conv+Add+ReLU fusion, NCHWc layout), ``intra_op_num_threads`` = the thread count, sequential
  execution (one inter-op thread).
- OpenVINO: CPU plugin, ``PERFORMANCE_HINT=LATENCY`` (one stream), ``INFERENCE_NUM_THREADS`` = the
  thread count, and ``INFERENCE_PRECISION_HINT=f32``: on CPUs with AVX-512 BF16 or AMX its default
  is bfloat16, which changes logits by ~1e-2 and is not the float32 computation compared here.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import tempfile
import warnings
from typing import Callable

import torch

ENGINES = ("onnxruntime", "openvino")
OPSET = 17


def versions() -> dict[str, str | None]:
    """Installed version of each dense engine's Python package, ``None`` where it is missing."""
    out = {}
    for name in ENGINES:
        try:
            out[name] = importlib.import_module(name).__version__
        except ImportError:
            out[name] = None
    return out


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: str) -> None:
    """The dense model as ONNX (TorchScript exporter, which needs the ``onnx`` package), batch
    dimension dynamic so that the same file serves batch 1 and batch 32."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # the exporter's deprecation notice, once per model
        torch.onnx.export(model.eval(), example[:1], path, input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=OPSET, dynamo=False)


def _onnxruntime(path: str, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"x": x.numpy()})[0])


def _openvino(path: str, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    import openvino as ov
    compiled = ov.Core().compile_model(path, "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                     "INFERENCE_NUM_THREADS": threads,
                                                     "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    # infer() copies the result out of the request's buffer: the next call does not overwrite it.
    return lambda x: torch.from_numpy(request.infer({0: x.numpy()})[0].copy())


_BUILDERS = {"onnxruntime": _onnxruntime, "openvino": _openvino}


def build(model: torch.nn.Module, example: torch.Tensor, threads: int | None = None,
          engines: tuple[str, ...] = ENGINES) -> tuple[dict[str, Callable], dict[str, str]]:
    """The plain (dense) ``model`` exported to ONNX and loaded into each of ``engines``.

    Returns (runners: name -> ``f(x) -> logits``, missing: name -> why it is not there). The ONNX
    file lives only while the engines load it (both keep their own copy of the weights).
    """
    threads = threads or torch.get_num_threads()
    found = versions()
    runners, missing = {}, {}
    wanted = [e for e in engines if found.get(e)]
    for e in engines:
        if not found.get(e):
            missing[e] = f"{e} is not installed (pip install -e .[bench])"
    if not wanted:
        return runners, missing
    if importlib.util.find_spec("onnx") is None:
        return runners, {**missing, **{w: "onnx is not installed, so the model cannot be exported "
                                          "(pip install -e .[bench])" for w in wanted}}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{getattr(model, 'arch', 'model')}.onnx")
        try:
            export_onnx(model, example, path)
        except Exception as e:                # exporter failures are many types; report, go on
            return runners, {**missing, **{w: f"ONNX export failed: {e}" for w in wanted}}
        for e in wanted:
            try:
                runners[e] = _BUILDERS[e](path, threads)
            except Exception as err:          # an engine that cannot load the model is skipped
                missing[e] = f"{e} could not load the model: {str(err).splitlines()[0]}"
    return runners, missing


def max_abs_diff(runner: Callable, reference: torch.nn.Module, x: torch.Tensor) -> float:
    """Largest |logit difference| between an engine and the PyTorch dense model on ``x``, one image
    at a time (batch 1, as timed). NaN anywhere is reported as inf, never as a small number."""
    worst = 0.0
    with torch.inference_mode():
        for i in range(len(x)):
            d = (runner(x[i:i + 1]) - reference(x[i:i + 1])).abs().max()
            worst = max(worst, float(d) if torch.isfinite(d) else float("inf"))
    return worst
