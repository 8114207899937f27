"""Start-up time of the `harmony` command line, and `harmony harmonize` on 4K from the shell, end to end.

    .venv/bin/python benchmarks/startup.py [--runs 3] [--checkpoint checkpoints/quickstart.ckpt]

Everything runs in fresh processes (``python -m harmony ...``), as from the shell; medians are printed.

1. ``harmony --version``, ``--help`` and ``harmony <command> --help`` for every command, side by side, so
   what each command imports before it can do anything is visible.
2. ``harmony harmonize`` end to end on a generated 3840x2160 JPEG composite and PNG mask, writing a PNG and
   a JPEG: ``--method Composite`` (torch, no network); a parametric checkpoint (``--checkpoint``, default
   checkpoints/quickstart.ckpt if present, else the quickstart model with random weights saved as a
   Lightning checkpoint) with the default runtime, its first run (ONNX export into an empty HARMONY_CACHE)
   and warm runs (cached export, torch never imported) apart, and with ``--runtime torch``; and the
   ``harmony export``-ed .onnx file.
3. Where the warm default run's time goes: the interpreter, ``import harmony.commands.harmonize``, then in
   a fresh process loading the runner and each step (decode / downsample / networks / apply / encode, via
   benchmarks/harmonize_steps.py), the heaviest imports (``-X importtime``), a check that torch is not
   imported, and the goal: harmonize 4K from the shell in under 5 s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harmonize_steps import OtherLoad, make_composite

from harmony.cli import LIGHTNING_COMMANDS, TOOL_COMMANDS

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = Path(__file__).resolve().parent
GOAL_SECONDS = 5.0
FORMATS = (".png", ".jpg")

MAKE_CHECKPOINT = """
import sys
sys.path.insert(0, sys.argv[2])
from lightning.pytorch import Trainer
from parametric_speed import quickstart_model
trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False)
trainer.strategy.connect(quickstart_model())
trainer.save_checkpoint(sys.argv[1])
"""
"""Save the quickstart model with random weights as a checkpoint ``harmony harmonize`` loads."""

TORCH_CHECK = """
import sys
from harmony.cli import main
status = main(sys.argv[1:])
print("torch imported:", "torch" in sys.modules)
sys.exit(status)
"""
"""Run ``harmony`` in this process, then say whether torch got imported."""


def wall(
    command: list[str], runs: int, env: dict[str, str] | None = None, exports: bool | None = None
) -> list[float]:
    """Wall seconds of ``runs`` fresh processes of ``command`` (each must succeed).

    ``exports``: whether each run must (``True``) or must not (``False``) say it exported to ONNX.
    """
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        completed = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
        times.append(time.perf_counter() - start)
        if completed.returncode != 0:
            raise SystemExit(f"failed: {' '.join(command)}\n{completed.stderr[-2000:]}")
        if exports is not None:
            exported = "exported the networks to ONNX" in completed.stderr
            assert exported == exports, f"{' '.join(command)}: export {exported}, expected {exports}"
    return times


def harmony(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "harmony", *arguments]


def seconds(arguments: list[str], runs: int) -> float:
    """Median wall time of ``python -m harmony <arguments>`` over ``runs`` fresh processes."""
    return statistics.median(wall(harmony(*arguments), runs))


def with_cache(cache: Path) -> dict[str, str]:
    return {**os.environ, "HARMONY_CACHE": str(cache)}


def help_part(runs: int) -> None:
    rows = [["--version"], ["--help"]] + [[name, "--help"] for name in (*LIGHTNING_COMMANDS, *TOOL_COMMANDS)]
    baseline = seconds(["--version"], runs)
    print(f"start-up, median of {runs} fresh processes")
    print(f"  {'command':<36} {'seconds':>8} {'x --version':>12}")
    for row in rows:
        elapsed = baseline if row == ["--version"] else seconds(row, runs)
        print(f"  {'harmony ' + ' '.join(row):<36} {elapsed:>8.2f} {elapsed / baseline:>12.1f}")


class Harmonize:
    """``harmony harmonize`` of the generated 4K composite, one output format or the other."""

    def __init__(self, folder: Path, composite: Path, mask: Path) -> None:
        self.folder, self.composite, self.mask = folder, composite, mask

    def arguments(self, source: list[str], suffix: str) -> list[str]:
        output = self.folder / f"harmonized{suffix}"
        return ["harmonize", *source, "--composite", str(self.composite), "--mask", str(self.mask)] + [
            "--output",
            str(output),
        ]

    def times(
        self, source: list[str], suffix: str, runs: int, cache: Path, exports: bool | None = None
    ) -> list[float]:
        return wall(harmony(*self.arguments(source, suffix)), runs, with_cache(cache), exports)

    def first_runs(self, source: list[str], suffix: str, runs: int) -> list[float]:
        """Runs each with an empty HARMONY_CACHE: the export to ONNX happens in every one."""
        times = []
        for _ in range(runs):
            cache = Path(tempfile.mkdtemp(dir=self.folder, prefix="cache-"))
            times += self.times(source, suffix, 1, cache, exports=True)
            shutil.rmtree(cache)
        return times


def breakdown(checkpoint: Path, scene: Harmonize, suffix: str, runs: int, cache: Path) -> dict[str, float]:
    """Median seconds per part of a warm default run, each from a fresh process harmonizing one image."""
    command = [
        sys.executable,
        str(BENCHMARKS / "harmonize_steps.py"),
        *("--checkpoint", str(checkpoint), "--composite", str(scene.composite), "--mask", str(scene.mask)),
        *("--output", str(scene.folder / f"steps{suffix}"), "--runs", "1"),
    ]
    reports = []
    for _ in range(runs):
        completed = subprocess.run(
            command, capture_output=True, text=True, cwd=ROOT, env=with_cache(cache), check=True
        )
        reports.append(json.loads(completed.stdout.strip().splitlines()[-1]))
    assert all(r["runner"] == "OnnxParametricHarmonizer" for r in reports), reports[0]["runner"]
    assert not any(r["torch_imported"] for r in reports), "the warm default run imported torch"
    parts = {
        "import onnxruntime": [r["seconds"]["import onnxruntime"] for r in reports],
        "load (ONNX session)": [r["seconds"]["load"] for r in reports],
        "decode": [r["first"]["decode"] / 1000 for r in reports],
        "downsample": [r["first"]["downsample"] / 1000 for r in reports],
        "networks": [(r["first"]["downsample+networks"] - r["first"]["downsample"]) / 1000 for r in reports],
        "apply": [r["first"]["apply"] / 1000 for r in reports],
        "encode": [r["first"]["encode"] / 1000 for r in reports],
    }
    return {name: statistics.median(values) for name, values in parts.items()}


def heaviest_imports(arguments: list[str], cache: Path, count: int = 6) -> list[tuple[str, float]]:
    """The top-level imports of one run taking longest (``-X importtime``, cumulative seconds)."""
    command = [sys.executable, "-X", "importtime", "-m", "harmony", *arguments]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=with_cache(cache))
    imports = {}
    for line in completed.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.removeprefix("import time:").split("|")
        if not name.startswith("  "):  # a top-level import, not one nested in another
            imports[name.strip()] = int(cumulative) / 1e6
    assert "torch" not in imports, "the warm default run imported torch"
    return sorted(imports.items(), key=lambda item: -item[1])[:count]


def make_checkpoint(path: Path) -> None:
    command = [sys.executable, "-c", MAKE_CHECKPOINT, str(path), str(BENCHMARKS)]
    subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True)


def harmonize_part(args: argparse.Namespace, folder: Path) -> None:
    runs = args.runs
    default = ROOT / "checkpoints" / "quickstart.ckpt"
    if args.checkpoint is not None or default.is_file():
        checkpoint = (args.checkpoint or default).resolve()
        label = str(args.checkpoint or default.relative_to(ROOT))
    else:
        checkpoint = folder / "quickstart-random.ckpt"
        make_checkpoint(checkpoint)
        label = "the quickstart model with random weights (no checkpoints/quickstart.ckpt here)"
    composite, mask = make_composite(folder, 3840, 2160, ".jpg")
    scene = Harmonize(folder, composite, mask)
    warm = folder / "warm-cache"
    source = ["--checkpoint", str(checkpoint)]
    # One untimed run fills the warm cache (the export); timed warm runs then find it there.
    scene.times(source, ".jpg", 1, warm, exports=True)
    exported = folder / "exported.onnx"
    export_seconds = wall(harmony("export", *source, "--output", str(exported)), 1)[0]
    rows = {
        "--method Composite (torch, no network)": lambda s: scene.times(
            ["--method", "Composite"], s, runs, warm
        ),
        "CK, first run (exports ONNX to empty cache)": lambda s: scene.first_runs(source, s, runs),
        "CK, warm (cached ONNX, no torch)": lambda s: scene.times(source, s, runs, warm, exports=False),
        "CK --runtime torch": lambda s: scene.times([*source, "--runtime", "torch"], s, runs, warm),
        "exported .onnx (--checkpoint model.onnx)": lambda s: scene.times(
            ["--checkpoint", str(exported)], s, runs, warm
        ),
    }
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    print(
        "harmony harmonize end to end from the shell: 3840x2160 JPEG composite + PNG mask, fresh process "
        f"each, median s of {runs} ({os.cpu_count()} CPUs; OMP_NUM_THREADS={threads})"
    )
    print(f"  CK = {label}; harmony export to .onnx took {export_seconds:.1f} s")
    print(f"  {'source':<46} {'-> PNG':>8} {'-> JPEG':>8}")
    medians: dict[str, dict[str, float]] = {}
    for name, measure in rows.items():
        medians[name] = {suffix: statistics.median(measure(suffix)) for suffix in FORMATS}
        cells = " ".join(f"{medians[name][suffix]:>8.2f}" for suffix in FORMATS)
        print(f"  {name:<46} {cells}")

    print(
        "where the time of the warm default run goes (median s; steps from fresh processes, one image each)"
    )
    python = statistics.median(wall([sys.executable, "-c", "pass"], runs))
    imports = statistics.median(wall([sys.executable, "-c", "import harmony.commands.harmonize"], runs))
    for suffix in FORMATS:
        parts = {
            "python": python,
            "imports": imports - python,
            **breakdown(checkpoint, scene, suffix, runs, warm),
        }
        total = medians["CK, warm (cached ONNX, no torch)"][suffix]
        listed = ", ".join(f"{name} {value:.2f} s" for name, value in parts.items())
        accounted = sum(parts.values())
        print(f"  -> {suffix[1:].upper()}: {listed}")
        print(
            f"     = {accounted:.2f} s accounted of {total:.2f} s end to end "
            "(the rest: argument parsing, mask checks, exit)"
        )
    heaviest = heaviest_imports(scene.arguments(source, ".png"), warm)
    print(
        "  heaviest top-level imports (-X importtime, cumulative): "
        + ", ".join(f"{name} {value:.2f} s" for name, value in heaviest)
    )
    check = [sys.executable, "-c", TORCH_CHECK, *scene.arguments(source, ".png")]
    completed = subprocess.run(
        check, capture_output=True, text=True, cwd=ROOT, env=with_cache(warm), check=True
    )
    assert "torch imported: False" in completed.stdout, completed.stdout
    print("  torch imported by the warm default run: no (checked: sys.modules after harmony.cli.main)")
    warm_times = medians["CK, warm (cached ONNX, no torch)"]
    verdict = "PASS" if max(warm_times.values()) < GOAL_SECONDS else "FAIL"
    print(
        f"goal: harmonize 4K from the shell < {GOAL_SECONDS:.0f} s on 2 cores: {verdict} (warm default run: "
        + ", ".join(f"{warm_times[suffix]:.2f} s -> {suffix[1:].upper()}" for suffix in FORMATS)
        + ")"
    )


def main() -> None:
    load = OtherLoad()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs", type=int, default=3, help="processes per measurement (the median is printed)"
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="a parametric checkpoint (default: checkpoints/quickstart.ckpt, else one with random weights)",
    )
    parser.add_argument("--skip-help", action="store_true", help="only the harmonize part")
    args = parser.parse_args()
    if not args.skip_help:
        help_part(args.runs)
    with tempfile.TemporaryDirectory() as temporary:
        harmonize_part(args, Path(temporary))
    print(load.summary())


if __name__ == "__main__":
    main()
