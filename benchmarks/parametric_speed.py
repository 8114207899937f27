"""Speed of SemiSupervisedParametric: the networks at 512x512, and `harmony harmonize` on a 4K composite.

    .venv/bin/python benchmarks/parametric_speed.py [--runs 10] [--checkpoint checkpoints/quickstart.ckpt]

Part 1 times the paper-sized networks (ResNet-50 curves + shading U-Net, 93M parameters, random
weights) predicting curves and shading from a 512x512 input, on this CPU in fp32 and bf16 autocast,
and on CUDA when available. The paper reports 377 ms on an Apple M1 CPU and 48.6 ms on an A100
(mean of 100 runs at 512x512).

Part 2 runs `harmony harmonize`'s steps on a generated 3840x2160 composite and times each: decode
(composite + mask files), predict (downsample + networks), apply (curves and shading at full
resolution, background pasted) and encode (PNG or JPEG, written atomically). It uses the paper-sized
model, a trained checkpoint (--checkpoint) or a config's model with random weights (--config).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from harmony.commands.harmonize import load_method, read_inputs
from harmony.commands.summary import build_model
from harmony.data.io import save_rgb
from harmony.methods.semi_supervised_parametric import (
    CurvePredictor,
    ResNetEncoder,
    SemiSupervisedParametric,
    ShadingUNet,
)


def paper_model() -> SemiSupervisedParametric:
    """The full method's generator at paper size (inputs C, B, M), random weights."""
    return SemiSupervisedParametric(
        curve_predictor=CurvePredictor(ResNetEncoder("resnet50", in_channels=7)),
        shading_net=ShadingUNet(in_channels=10),
        low_resolution=512,
    )


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


def report(label: str, times: list[float]) -> None:
    spread = f" ± {statistics.stdev(times):6.1f}" if len(times) > 1 else ""
    median = statistics.median(times)
    print(f"  {label:<34} {statistics.mean(times):9.1f} ms{spread}  (median {median:.1f}, n={len(times)})")


def network_speed(
    model: SemiSupervisedParametric, device: torch.device, runs: dict[str, int], warmup: dict[str, int]
) -> None:
    model = model.to(device).eval()
    composite = torch.rand(1, 3, 512, 512, device=device)
    mask = torch.zeros(1, 1, 512, 512, device=device)
    mask[..., 128:384, 160:352] = 1
    for precision in ("fp32", "bf16"):

        def step(bf16: bool = precision == "bf16") -> None:
            autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
            with torch.inference_mode(), autocast:
                model.render(composite, mask, *model.predict_parameters(composite, mask))

        times = timed(step, runs[precision], warmup[precision], synchronize=device.type == "cuda")
        report(f"{device.type} {precision} 512x512", times)


def make_composite(folder: Path, width: int, height: int, suffix: str) -> tuple[Path, Path]:
    """A photo-like 4K composite (smooth gradients + texture) and an elliptical soft mask."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 90 + 60 * np.sin(xx[..., None] / 400 + np.array([0, 1, 2])) + 40 * np.cos(yy[..., None] / 300)
    texture = rng.normal(0, 6, (height // 4, width // 4, 3)).repeat(4, 0).repeat(4, 1)
    image = np.clip(base + texture, 0, 255).astype(np.uint8)
    distance = np.hypot((yy - height / 2) / (height / 3), (xx - width / 2) / (width / 5))
    mask = (np.clip((1.02 - distance) * 50, 0, 1) * 255).astype(np.uint8)
    image[mask > 0] = np.clip(image[mask > 0] * np.array([1.2, 0.9, 0.8]), 0, 255).astype(np.uint8)
    composite_path, mask_path = folder / f"composite{suffix}", folder / "mask.png"
    Image.fromarray(image).save(composite_path, quality=95)
    Image.fromarray(mask).save(mask_path)
    return composite_path, mask_path


def harmonize_speed(model: SemiSupervisedParametric, runs: int, suffix: str, width: int, height: int) -> None:
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        composite_path, mask_path = make_composite(folder, width, height, suffix)
        parts: dict[str, list[float]] = {"decode": [], "predict": [], "apply": [], "encode": []}
        for _ in range(runs + 1):
            marks = [time.perf_counter()]
            composite, mask = read_inputs(composite_path, mask_path)
            marks.append(time.perf_counter())
            adjustments = model.estimate_adjustments(composite, mask)
            marks.append(time.perf_counter())
            output = model.apply_adjustments(composite, mask, adjustments)
            marks.append(time.perf_counter())
            save_rgb(folder / f"output{suffix}", output)
            marks.append(time.perf_counter())
            for values, start, end in zip(parts.values(), marks, marks[1:], strict=False):
                values.append((end - start) * 1000)
        assert output.shape == composite.shape
        assert np.array_equal(output[mask == 0], composite[mask == 0]), "background changed"
        for name, values in parts.items():
            detail = f", {suffix}" if name in ("decode", "encode") else ""
            report(f"{name} ({width}x{height}{detail})", values[1:])
        totals = [sum(values[i] for values in parts.values()) for i in range(1, runs + 1)]
        report("end to end", totals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs per CPU fp32 and 4K measurement")
    parser.add_argument("--bf16-runs", type=int, default=1, help="timed runs of CPU bf16 (slow here)")
    parser.add_argument("--cuda-runs", type=int, default=100, help="timed runs per CUDA measurement")
    parser.add_argument("--checkpoint", type=Path, help="use a trained checkpoint for the 4K harmonize part")
    parser.add_argument(
        "--config", help="or a config's model with random weights (e.g. experiments/quickstart.yaml)"
    )
    parser.add_argument("--format", choices=(".png", ".jpg"), default=".jpg", help="4K file format")
    parser.add_argument("--skip-networks", action="store_true", help="only the 4K harmonize part")
    args = parser.parse_args()
    threads, cuda = torch.get_num_threads(), torch.cuda.is_available()
    print(f"torch {torch.__version__}, {threads} CPU threads, CUDA: {cuda}")

    model = paper_model()
    parameters = sum(p.numel() for p in model.parameters())
    if not args.skip_networks:
        print(f"networks at 512x512 ({parameters / 1e6:.1f}M parameters; paper: 377 ms M1 CPU, 48.6 ms A100)")
        if not (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()):
            print("  (no AVX512-BF16/AMX on this CPU: bf16 convolutions are emulated, hence slow)")
        runs = {"fp32": args.runs, "bf16": args.bf16_runs}
        network_speed(model, torch.device("cpu"), runs, warmup={"fp32": 1, "bf16": 1})
        if torch.cuda.is_available():
            runs = {"fp32": args.cuda_runs, "bf16": args.cuda_runs}
            network_speed(paper_model(), torch.device("cuda"), runs, warmup={"fp32": 10, "bf16": 10})

    harmonizer = model.to("cpu").eval()
    label = "paper-sized, random weights"
    if args.checkpoint is not None:
        harmonizer, label = load_method(args.checkpoint, None, torch.device("cpu")), str(args.checkpoint)
    elif args.config is not None:
        harmonizer, label = build_model([args.config], []).eval(), f"{args.config}, random weights"
    print(f"harmony harmonize on a 3840x2160 composite, CPU ({label})")
    harmonize_speed(harmonizer, args.runs, args.format, 3840, 2160)
    if torch.cuda.is_available():
        print("harmony harmonize on a 3840x2160 composite, networks on CUDA")
        harmonize_speed(harmonizer.to("cuda"), args.runs, args.format, 3840, 2160)


if __name__ == "__main__":
    main()
