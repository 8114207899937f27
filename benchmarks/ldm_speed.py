"""Speed of the latent-diffusion harmonizer (DiffHarmony's UNet + VAE) with random weights.

Per-image inference time of the whole pipeline (encode the composite, N Euler-ancestral steps, decode,
resize back, paste) at each working size, and training steps per second (VAE encoding + UNet forward,
backward and AdamW step), for several execution variants side by side:

    fp32 classic attention | fp32 SDPA | bf16 SDPA | bf16 SDPA channels_last | ... + torch.compile

Paper-sized on a GPU (the defaults):
    python benchmarks/ldm_speed.py
On a CPU, use small sizes or the tiny component preset:
    python benchmarks/ldm_speed.py --sizes 128 --train-size 0 --no-compile
    python benchmarks/ldm_speed.py --preset tiny_inpainting --sizes 64 128 --train-size 64
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from harmony.methods.diffharmony import DiffHarmony
from harmony.nn.latent import build_noise_scheduler, build_unet, build_vae


@dataclass(frozen=True)
class Variant:
    name: str
    bf16: bool
    sdpa: bool
    channels_last: bool
    compile: bool


VARIANTS = [
    Variant("fp32, classic attention", bf16=False, sdpa=False, channels_last=False, compile=False),
    Variant("fp32, SDPA", bf16=False, sdpa=True, channels_last=False, compile=False),
    Variant("bf16, SDPA", bf16=True, sdpa=True, channels_last=False, compile=False),
    Variant("bf16, SDPA, channels_last", bf16=True, sdpa=True, channels_last=True, compile=False),
    Variant("bf16, SDPA, channels_last, compile", bf16=True, sdpa=True, channels_last=True, compile=True),
]


def build_model(preset: str, variant: Variant, device: torch.device, size: int, steps: int) -> DiffHarmony:
    torch.manual_seed(0)
    model = DiffHarmony(
        build_unet(preset),
        build_vae(preset),
        build_noise_scheduler(preset),
        num_inference_steps=steps,
        inference_size=size,
        ema_decay=None,
    ).to(device)
    processor = AttnProcessor2_0() if variant.sdpa else AttnProcessor()
    model.unet.set_attn_processor(processor)
    model.vae.set_attn_processor(processor)
    if variant.channels_last:
        model.unet.to(memory_format=torch.channels_last)
        model.vae.to(memory_format=torch.channels_last)
    if variant.compile:
        model.unet = torch.compile(model.unet)
    return model


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def timed(function: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    """Median seconds per call after ``warmup`` calls."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def make_batch(size: int, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    mask = torch.zeros(batch_size, 1, size, size)
    mask[..., size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1
    return {
        "composite": torch.rand(batch_size, 3, size, size, generator=generator).to(device),
        "target": torch.rand(batch_size, 3, size, size, generator=generator).to(device),
        "mask": mask.to(device),
    }


def inference_seconds(args: argparse.Namespace, variant: Variant, size: int, device: torch.device) -> float:
    model = build_model(args.preset, variant, device, size, args.steps).eval()
    batch = make_batch(size, 1, device)

    def run() -> None:
        with torch.no_grad(), autocast(device, variant.bf16):
            model.harmonize(batch)

    return timed(run, device, args.warmup, args.repeats)


def train_steps_per_second(args: argparse.Namespace, variant: Variant, device: torch.device) -> float:
    model = build_model(args.preset, variant, device, args.train_size, args.steps).train()
    optimizer = torch.optim.AdamW(model.unet.parameters(), lr=1e-4, weight_decay=1e-2)
    batch = make_batch(args.train_size, args.train_batch, device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, variant.bf16):
            loss = model.training_loss(batch)
        loss.backward()
        optimizer.step()

    return 1.0 / timed(step, device, args.warmup, args.repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--preset", default="sd15_inpainting", help="component preset (tiny_inpainting on a CPU)"
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024], help="inference working sizes")
    parser.add_argument("--steps", type=int, default=5, help="Euler-ancestral steps")
    parser.add_argument("--train-size", type=int, default=512, help="training resolution (0: skip training)")
    parser.add_argument("--train-batch", type=int, default=1, help="training batch size")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    variants = [v for v in VARIANTS if not (v.compile and args.no_compile)]
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(f"# {args.preset}, {args.steps} steps, random weights, {name}, torch {torch.__version__}")
    header = [f"infer {s}px ms/img" for s in args.sizes]
    if args.train_size:
        header.append(f"train {args.train_size}px b{args.train_batch} steps/s")
    print(f"| {'variant':<38} | " + " | ".join(header) + " |")
    print("|" + "-" * 40 + "|" + "|".join("-" * (len(h) + 2) for h in header) + "|")
    for variant in variants:
        cells = [f"{1000 * inference_seconds(args, variant, size, device):.1f}" for size in args.sizes]
        if args.train_size:
            cells.append(f"{train_steps_per_second(args, variant, device):.2f}")
        row = " | ".join(cell.rjust(len(h)) for cell, h in zip(cells, header, strict=True))
        print(f"| {variant.name:<38} | {row} |", flush=True)


if __name__ == "__main__":
    main()
