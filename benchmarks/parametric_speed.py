"""Speed of SemiSupervisedParametric: its networks against this machine's peak, and `harmonize` on 4K.

    .venv/bin/python benchmarks/parametric_speed.py [--runs 3] [--compile] [--checkpoint CK]

Part 1 puts the networks beside what this machine can do, in one run:

- their FLOPs for one image (``predict_parameters``: the curves and shading networks and what feeds them),
  counted by ``torch.utils.flop_counter.FlopCounterMode``, which counts 2 FLOPs per multiply-add (FLOPs =
  2 x MACs), for the paper-sized model (ResNet-50 curves + shading U-Net, 93M parameters, at 512x512) and
  the quickstart model (experiments/quickstart.yaml, at its 128x128);
- this machine's measured fp32 peak: a 2048^3 matmul and a 3x3 256->256 convolution at 64x64 (batch 4);
- the achieved GFLOP/s and its share of that peak for each way of running the networks: eager fp32,
  channels_last, torch.compile (only with --compile: compiling takes minutes on 2 cores) and ONNX Runtime
  (``export_onnx``, ORT_ENABLE_ALL), each checked against eager (curves and gain within --tolerance);
- bf16 autocast where the CPU has native bf16 (AVX512-BF16 or AMX; elsewhere it is emulated and takes
  minutes, so it is skipped), and the CUDA timings when a GPU is there.

The weights are random, and the zero-initialised output layers (curve head, shading map) get random
weights too, so the outputs depend on the inputs and the comparisons mean something. The paper reports
377 ms on an Apple M1 CPU and 48.6 ms on an A100 (mean of 100 runs at 512x512).

Part 2 runs `harmony harmonize`'s steps on a generated 3840x2160 composite with the runner the command
uses (``harmony.api.load_runner``), PyTorch and ONNX Runtime side by side, and times each step: decode
(composite + mask files), downsample + networks, apply (curves and shading at full resolution, background
pasted) and encode (written atomically). With --checkpoint the runners are ``load_runner(checkpoint, None,
"cpu", "torch" | "onnx")`` (the ONNX export goes into a temporary HARMONY_CACHE, timed); without one, the
quickstart model with random weights, exported to a temporary .onnx file.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from harmonize_steps import STEPS, OtherLoad, harmonize_once, make_composite, median_times
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from harmony.commands.summary import build_model
from harmony.methods.semi_supervised_parametric import (
    CurvePredictor,
    ResNetEncoder,
    SemiSupervisedParametric,
    ShadingUNet,
)

QUICKSTART = "experiments/quickstart.yaml"


def paper_model() -> SemiSupervisedParametric:
    """The full method's generator at paper size (inputs C, B, M), random weights (seeded)."""
    torch.manual_seed(0)
    return SemiSupervisedParametric(
        curve_predictor=CurvePredictor(ResNetEncoder("resnet50", in_channels=7)),
        shading_net=ShadingUNet(in_channels=10),
        low_resolution=512,
    )


def quickstart_model() -> SemiSupervisedParametric:
    """experiments/quickstart.yaml's model (low_resolution 128), random weights, built quietly."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    # LightningCLI reads sys.argv too (and warns about this script's arguments); its info lines are noise.
    arguments, sys.argv[1:] = sys.argv[1:], []
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        return build_model([QUICKSTART], [])
    finally:
        sys.argv[1:] = arguments
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def randomize_zero_layers(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give the zero-initialised output layers random weights, so the outputs depend on the inputs.

    Untrained, the curve head and the shading map's last layers are zeros: every input then gives the
    identity curves and a constant gain, and any two runtimes agree trivially.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)) and not module.weight.any():
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) / math.sqrt(fan_in))
    return model


def example_inputs(size: int, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """A random composite and a rectangular mask at ``size``x``size``."""
    composite = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(batch, 1, size, size)
    mask[..., size // 4 : 3 * size // 4, 5 * size // 16 : 11 * size // 16] = 1
    return composite, mask


def timed(function: Callable[[], object], runs: int, warmup: int, synchronize: bool = False) -> list[float]:
    """Wall-clock milliseconds of ``runs`` calls after ``warmup`` untimed ones."""
    times = []
    for index in range(warmup + runs):
        start = time.perf_counter()
        function()
        if synchronize:
            torch.cuda.synchronize()
        if index >= warmup:
            times.append((time.perf_counter() - start) * 1000)
    return times


def count_flops(model: SemiSupervisedParametric, size: int) -> float:
    """FLOPs (2 per multiply-add) of ``model.predict_parameters`` on one ``size``x``size`` image."""
    composite, mask = example_inputs(size)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.predict_parameters(composite, mask)
    return float(counter.get_total_flops())


# --- this machine's fp32 peak ---------------------------------------------------------------------------


@dataclass
class Peak:
    """The best fp32 GFLOP/s measured, and by what."""

    gflops: float
    source: str


PEAK_REPEATS = 10


def peak_candidates(threads: int, repeats: int = PEAK_REPEATS) -> dict[str, float]:
    """Best fp32 GFLOP/s at ``threads`` threads of a large matmul and a representative convolution."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    candidates: dict[str, float] = {}
    size = 2048
    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.empty(size, size)
    try:
        with torch.inference_mode():
            best = min(timed(lambda: torch.mm(a, b, out=out), repeats, warmup=1))
        candidates[f"matmul {size}^3 (BLAS)"] = 2 * size**3 / (best / 1000) / 1e9
        batch, channels, side = 4, 256, 64
        flops = 2 * batch * channels * channels * 9 * side * side
        weight = torch.randn(channels, channels, 3, 3) / math.sqrt(channels * 9)
        inputs = torch.randn(batch, channels, side, side)
        layouts = (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last))
        for layout, memory_format in layouts:
            x = inputs.contiguous(memory_format=memory_format)
            w = weight.contiguous(memory_format=memory_format)
            with torch.inference_mode():
                best = min(timed(lambda x=x, w=w: torch.nn.functional.conv2d(x, w, padding=1), repeats, 1))
            name = f"conv 3x3 {channels}->{channels} {side}x{side} batch {batch} {layout} (oneDNN)"
            candidates[name] = flops / (best / 1000) / 1e9
    finally:
        torch.set_num_threads(previous)
    return candidates


def report_peak(before: dict[str, float], after: dict[str, float], one_thread: dict[str, float]) -> Peak:
    """Print the peak measurements (before and after the networks, on one thread); the best is the peak."""
    threads = torch.get_num_threads()
    blas = "mkl" if "BLAS_INFO=mkl" in torch.__config__.show() else "other"
    print(
        f"fp32 peak of this machine, best of {PEAK_REPEATS} (GFLOP/s; measured before and after the "
        f"networks, {threads} threads, and on 1 thread; BLAS: {blas})"
    )
    print(f"  {'kernel':<60} {'before':>7} {'after':>7} {'1 thread':>9}")
    for name in before:
        print(f"  {name:<60} {before[name]:>7.1f} {after[name]:>7.1f} {one_thread[name]:>9.1f}")
    best = {name: max(before[name], after[name]) for name in before}
    source = max(best, key=best.__getitem__)
    peak = Peak(best[source], source)
    print(f"  peak = the better: {peak.gflops:.1f} GFLOP/s ({source}, {threads} threads)")
    if peak.gflops < 1.5 * max(one_thread.values()) and threads > 1:
        print(
            f"  (under 1.5x the 1-thread peak with {threads} threads: another process had a core; "
            "every number here is disturbed the same way)"
        )
    return peak


# --- the networks, each way of running them ------------------------------------------------------------


@dataclass
class PathResult:
    """One way of running the networks: its times and how far its outputs are from eager fp32."""

    label: str
    times: list[float] | None = None
    differences: tuple[float, float] | None = None
    tolerance: float | None = None
    note: str = ""

    @property
    def best(self) -> float:
        return min(self.times) if self.times else math.inf

    @property
    def agrees(self) -> bool:
        return self.differences is not None and max(self.differences) <= (self.tolerance or 0.0)


def as_arrays(outputs: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """``(curves, gain)`` of any path (tensors of any dtype, or ONNX Runtime's arrays) as float32 arrays."""
    curves, gain = (outputs[0], outputs[1] if len(outputs) > 1 else None)

    def array(value: Any) -> np.ndarray | None:
        if value is None:
            return None
        if isinstance(value, torch.Tensor):
            return value.detach().float().cpu().contiguous().numpy()
        return np.asarray(value, dtype=np.float32)

    return array(curves), array(gain)


def largest_differences(outputs: Any, reference: tuple[np.ndarray, np.ndarray | None]) -> tuple[float, float]:
    curves, gain = as_arrays(outputs)
    curve_difference = float(np.abs(curves - reference[0]).max())
    gain_difference = 0.0 if gain is None else float(np.abs(gain - reference[1]).max())
    return curve_difference, gain_difference


def network_paths(
    model: SemiSupervisedParametric, onnx_path: Path, args: argparse.Namespace
) -> list[PathResult]:
    """Time ``predict_parameters`` on one image for each way of running it, checked against eager fp32."""
    size = model.low_resolution
    composite, mask = example_inputs(size)

    def eager() -> Any:
        with torch.inference_mode():
            return model.predict_parameters(composite, mask)

    reference = as_arrays(eager())
    results = [PathResult("eager fp32 (inference_mode)", timed(eager, args.runs, 1), note="the reference")]

    def check(result: PathResult, function: Callable[[], Any], tolerance: float) -> PathResult:
        result.differences = largest_differences(function(), reference)
        result.tolerance = tolerance
        return result

    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    composite_cl = composite.contiguous(memory_format=torch.channels_last)
    mask_cl = mask.contiguous(memory_format=torch.channels_last)

    def channels_last_step() -> Any:
        with torch.inference_mode():
            return channels_last.predict_parameters(composite_cl, mask_cl)

    results.append(
        check(
            PathResult("channels_last (model and inputs)", timed(channels_last_step, args.runs, 1)),
            channels_last_step,
            args.tolerance,
        )
    )

    if args.compile:
        compiled = torch.compile(model.predict_parameters)

        def compiled_step() -> Any:
            with torch.no_grad():
                return compiled(composite, mask)

        start = time.perf_counter()
        compiled_step()
        compile_seconds = time.perf_counter() - start
        result = PathResult("torch.compile (inductor)", timed(compiled_step, args.runs, 1))
        result.note = f"compiling took {compile_seconds:.0f} s"
        results.append(check(result, compiled_step, args.tolerance))
    else:
        results.append(PathResult("torch.compile", note="skipped (--compile)"))

    from harmony.methods.semi_supervised_parametric.onnx_runtime import OnnxParametricHarmonizer

    # The session `harmony harmonize` runs, with this benchmark's thread count.
    session = OnnxParametricHarmonizer(onnx_path, "cpu", torch.get_num_threads()).session
    feeds = {"composite": composite.numpy(), "mask": mask.numpy()}

    def ort_step() -> Any:
        return session.run(None, feeds)

    result = PathResult("ONNX Runtime (ORT_ENABLE_ALL)", timed(ort_step, args.runs, 1))
    results.append(check(result, ort_step, args.tolerance))

    if native_bf16():

        def bf16_step() -> Any:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                return model.predict_parameters(composite, mask)

        result = PathResult("bf16 autocast", timed(bf16_step, args.runs, 1))
        result.note = "bf16 rounding: shown, not held to the tolerance; not a candidate"
        results.append(check(result, bf16_step, math.inf))
    else:
        results.append(PathResult("bf16 autocast", note=f"skipped: {NO_BF16}"))
    return results


NO_BF16 = "no AVX512-BF16/AMX on this CPU, bf16 convolutions would be emulated (minutes)"


def native_bf16() -> bool:
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def print_paths(results: list[PathResult], flops: float, peak: Peak, tolerance: float) -> None:
    print(
        f"  {'path':<42} {'median ms':>9} {'best ms':>8} {'GFLOP/s':>8} {'of peak':>7}  "
        "max |diff| vs eager: curves, gain"
    )
    above = False
    for result in results:
        if result.times is None:
            print(f"  {result.label:<42} {result.note}")
            continue
        gflops = flops / (result.best / 1000) / 1e9
        share = f"{gflops / peak.gflops:6.0%}" if "bf16" not in result.label else "   n/a"
        if gflops > peak.gflops and "bf16" not in result.label:
            share, above = share + "*", True
        if result.differences is None:
            check = result.note
        elif math.isinf(result.tolerance or 0.0):
            check = f"{result.differences[0]:.1e}, {result.differences[1]:.1e}  {result.note}"
        else:
            verdict = "ok" if result.agrees else "DIFFERS"
            check = (
                f"{result.differences[0]:.1e}, {result.differences[1]:.1e}  "
                f"{verdict} (<= {result.tolerance:.0e}){'; ' + result.note if result.note else ''}"
            )
        median = statistics.median(result.times)
        print(f"  {result.label:<42} {median:>9.1f} {result.best:>8.1f} {gflops:>8.1f} {share:>7}  {check}")
    if above:
        print("  (* above the measured peak: the peak's runs met more load from others than this one)")
    eager = results[0]
    candidates = [r for r in results[1:] if r.times and r.agrees and "bf16" not in r.label]
    fastest = min([eager, *candidates], key=lambda r: r.best)
    speedup = eager.best / fastest.best
    print(
        f"  fastest fp32 path within {tolerance:.0e} of eager: {fastest.label}, {fastest.best:.1f} ms "
        f"= {speedup:.2f}x eager ({eager.best:.1f} ms), "
        f"{flops / (fastest.best / 1000) / 1e9 / peak.gflops:.0%} of peak"
    )


def cuda_speed(model: SemiSupervisedParametric, flops: float, runs: int) -> None:
    """``predict_parameters`` on CUDA in fp32 and bf16 autocast (mean of ``runs`` after 10 warm-up)."""
    device = torch.device("cuda")
    model = copy.deepcopy(model).to(device).eval()
    composite, mask = (tensor.to(device) for tensor in example_inputs(model.low_resolution))
    for precision in ("fp32", "bf16"):

        def step(bf16: bool = precision == "bf16") -> None:
            autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
            with torch.inference_mode(), autocast:
                model.predict_parameters(composite, mask)

        times = timed(step, runs, 10, synchronize=True)
        mean, best = statistics.mean(times), min(times)
        print(
            f"  cuda {precision} {torch.cuda.get_device_name()}: mean {mean:.2f} ms, best {best:.2f} ms "
            f"(n={runs}), {flops / (best / 1000) / 1e9:.0f} GFLOP/s"
        )


def networks_part(args: argparse.Namespace, quickstart: SemiSupervisedParametric, folder: Path) -> None:
    threads = torch.get_num_threads()
    before = peak_candidates(threads)
    one_thread = peak_candidates(1)
    models = {"paper-sized (ResNet-50 + shading U-Net)": paper_model(), "quickstart": quickstart}
    flops, results, exports = {}, {}, {}
    for name, model in models.items():
        randomize_zero_layers(model.eval())
        flops[name] = count_flops(model, model.low_resolution)
    for name, model in models.items():
        onnx_path = folder / f"{name.split()[0]}.onnx"
        start = time.perf_counter()
        export_onnx(model, onnx_path)
        exports[name] = time.perf_counter() - start
        results[name] = network_paths(model, onnx_path, args)
    after = peak_candidates(threads)
    peak = report_peak(before, after, one_thread)
    for name, model in models.items():
        parameters = sum(p.numel() for p in model.parameters()) / 1e6
        size = model.low_resolution
        print(
            f"FLOPs of predict_parameters, {name}: {flops[name] / 1e9:.2f} GFLOP at {size}x{size}, one "
            f"image ({parameters:.2f}M parameters; FlopCounterMode, FLOPs = 2 x MACs)"
        )
    for name, model in models.items():
        size = model.low_resolution
        print(
            f"networks of the {name} model at {size}x{size}, one image, CPU, {threads} threads, {args.runs} "
            f"runs after 1 warm-up (ONNX export {exports[name]:.1f} s; GFLOP/s and share of the "
            f"{peak.gflops:.0f} GFLOP/s peak from the best run: others share this machine, the median shows "
            "their load)"
        )
        if name.startswith("paper"):
            print("  (paper: 377 ms on an Apple M1 CPU, 48.6 ms on an A100)")
        print_paths(results[name], flops[name], peak, args.tolerance)
        if torch.cuda.is_available():
            cuda_speed(model, flops[name], args.cuda_runs)
        elif name.startswith("paper"):
            print("  CUDA: not available")
    # Free the paper-sized model (372 MB of weights) before the 4K part.
    del models


# --- `harmony harmonize` on 4K --------------------------------------------------------------------------


def export_onnx(model: SemiSupervisedParametric, path: Path) -> None:
    from harmony.methods.semi_supervised_parametric.onnx_export import export_onnx as export

    export(model, path)


def harmonize_part(
    args: argparse.Namespace,
    quickstart: SemiSupervisedParametric | None,
    folder: Path,
    width: int,
    height: int,
) -> None:
    from harmony.api import load_runner
    from harmony.methods.semi_supervised_parametric.onnx_runtime import OnnxParametricHarmonizer

    runners: dict[str, Any] = {}
    loading: dict[str, float] = {}
    if args.checkpoint is not None:
        label = str(args.checkpoint)
        for runtime in ("torch", "onnx"):
            start = time.perf_counter()
            runners[runtime] = load_runner(args.checkpoint, None, "cpu", runtime)
            loading[runtime] = time.perf_counter() - start
        loading_note = "load_runner, the onnx one exporting into an empty HARMONY_CACHE"
    else:
        label = f"{QUICKSTART}, random weights"
        assert quickstart is not None
        runners["torch"] = quickstart.cpu().eval()
        start = time.perf_counter()
        export_onnx(quickstart, folder / "quickstart.onnx")
        runners["onnx"] = OnnxParametricHarmonizer(folder / "quickstart.onnx", "cpu")
        loading = {"torch": 0.0, "onnx": time.perf_counter() - start}
        loading_note = "the onnx one: export_onnx + OnnxParametricHarmonizer"
    composite_path, mask_path = make_composite(folder, width, height, args.format)
    output_path = folder / f"output{args.format}"
    runs: dict[str, list[dict[str, float]]] = {runtime: [] for runtime in runners}
    outputs: dict[str, np.ndarray] = {}
    # Interleaved, one warm-up round, so a load from others on this machine hits both runtimes alike.
    for index in range(args.runs + 1):
        for runtime, runner in runners.items():
            result = harmonize_once(runner, composite_path, mask_path, output_path)
            outputs[runtime] = result["output"]
            if index > 0:
                runs[runtime].append(result["times"])
    medians = {runtime: median_times(values) for runtime, values in runs.items()}
    difference = int(np.abs(outputs["torch"].astype(np.int16) - outputs["onnx"].astype(np.int16)).max())
    threads = runners["onnx"].session.get_session_options().intra_op_num_threads
    print(
        f"harmony harmonize on a {width}x{height} {args.format} composite, CPU ({label}); "
        f"median ms of {args.runs} after 1 warm-up"
    )
    print(f"  loading: torch {loading['torch']:.1f} s, onnx {loading['onnx']:.1f} s ({loading_note})")
    print(
        f"  {'step':<32} {'torch':>9} {'onnx':>9}   (torch {torch.get_num_threads()} threads, ONNX Runtime "
        f"{threads or 'default'} intra-op)"
    )
    rows = [*STEPS, "end to end"]
    for name in rows:
        detail = f" ({args.format})" if name in ("decode", "encode") else ""
        cells = " ".join(f"{medians[runtime][name]:>9.1f}" for runtime in ("torch", "onnx"))
        print(f"  {name + detail:<32} {cells}")
    cells = " ".join(f"{medians[r]['downsample']:>9.1f}" for r in ("torch", "onnx"))
    print(f"  {'(of which downsample)':<32} {cells}")
    speedup = medians["torch"]["end to end"] / medians["onnx"]["end to end"]
    print(
        f"  onnx vs torch: {speedup:.2f}x end to end; largest pixel difference of the outputs {difference} "
        "(of 255); background unchanged in both"
    )


def main() -> None:
    load = OtherLoad()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs per measurement (CPU)")
    parser.add_argument("--cuda-runs", type=int, default=100, help="timed runs per CUDA measurement")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (minutes on 2 cores)")
    parser.add_argument(
        "--tolerance", type=float, default=1e-4, help="largest |difference| from eager fp32 accepted"
    )
    parser.add_argument("--checkpoint", type=Path, help="a trained checkpoint for the 4K harmonize part")
    parser.add_argument("--format", choices=(".png", ".jpg"), default=".jpg", help="4K file format")
    parser.add_argument("--skip-networks", action="store_true", help="only the 4K harmonize part")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    capability = torch.backends.cpu.get_cpu_capability()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, CPU capability {capability}, "
        f"native bf16: {native_bf16()}, CUDA: {cuda}"
    )
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        # load_runner's ONNX exports go here, not into the user's cache.
        os.environ["HARMONY_CACHE"] = str(folder / "cache")
        # The quickstart model: measured in part 1, and the model of part 2 without --checkpoint.
        quickstart = quickstart_model() if args.checkpoint is None or not args.skip_networks else None
        if not args.skip_networks:
            networks_part(args, quickstart, folder)
        if quickstart is not None:
            randomize_zero_layers(quickstart.eval())
        harmonize_part(args, quickstart, folder, 3840, 2160)
    print(load.summary())


if __name__ == "__main__":
    main()
