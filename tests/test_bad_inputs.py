"""One table of bad inputs, driven through every command: exit status, one line, no traceback, nothing left.

Each case builds its arguments in a fresh folder and says what must happen: ``error`` (exit 2, exactly
one ``harmony: error:`` line on stderr, no traceback) or ``ok`` (exit 0; the inputs harmony accepts on
purpose: palette, 16-bit, CMYK, RGBA, EXIF-rotated, soft and dithered masks, non-UTF-8 names). Whatever
happens, no temporary file may be left in the output folder.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import harmony.data.io
from harmony.cli import main
from tests.conftest import REPO_ROOT

Case = Callable[[Path, Path], list[str]]


def _inputs(folder: Path) -> Path:
    """A good composite and mask and every bad variant of them, in ``folder/in``."""
    source = folder / "in"
    source.mkdir()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    mask = np.zeros((40, 60), np.uint8)
    mask[10:30, 20:40] = 255
    Image.fromarray(image).save(source / "c.png")
    Image.fromarray(mask).save(source / "m.png")
    (source / "zero.png").write_bytes(b"")
    (source / "truncated.png").write_bytes((source / "c.png").read_bytes()[:200])
    (source / "text.png").write_text("not an image")
    Image.fromarray(image).convert("P").save(source / "palette.png")
    Image.fromarray(image[..., 0].astype(np.uint16) * 257).save(source / "sixteen.png")
    Image.fromarray(image).convert("CMYK").save(source / "cmyk.jpg")
    alpha = np.where(mask > 0, 255, 0).astype(np.uint8)
    Image.fromarray(np.dstack([image, alpha])).save(source / "rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned by 90°: it fits the mask only once the orientation is applied
    Image.fromarray(np.ascontiguousarray(np.rot90(image))).save(source / "rotated.jpg", exif=exif)
    Image.fromarray(mask[:20]).save(source / "small_mask.png")
    Image.fromarray(np.zeros_like(mask)).save(source / "empty_mask.png")
    Image.fromarray(np.full_like(mask, 255)).save(source / "full_mask.png")
    soft = (np.linspace(0, 255, 60)[None, :] * np.ones((40, 1))).astype(np.uint8)
    Image.fromarray(soft).save(source / "soft_mask.png")
    Image.fromarray(mask).convert("1", dither=Image.Dither.FLOYDSTEINBERG).save(source / "dithered_mask.png")
    (source / "a_file").write_text("x")
    odd = os.fsdecode(b"\xff\xfe.png")
    shutil.copy(source / "c.png", source / odd)
    return source


def _harmonize(composite: str, mask: str | None, output: str) -> Case:
    def arguments(source: Path, out: Path) -> list[str]:
        command = ["harmonize", "--method", "ReinhardLabTransfer", "--composite", str(source / composite)]
        if mask is not None:
            command += ["--mask", str(source / mask)]
        return [*command, "--output", str(out / output)]

    return arguments


HARMONIZE = {
    "missing": ("error", _harmonize("nope.png", "m.png", "o.png")),
    "zero-byte": ("error", _harmonize("zero.png", "m.png", "o.png")),
    "truncated": ("error", _harmonize("truncated.png", "m.png", "o.png")),
    "wrong type": ("error", _harmonize("text.png", "m.png", "o.png")),
    "mismatched sizes": ("error", _harmonize("c.png", "small_mask.png", "o.png")),
    "no mask, no alpha": ("error", _harmonize("c.png", None, "o.png")),
    "output under a file": ("error", _harmonize("c.png", "m.png", "../in/a_file/o.png")),
    "unknown suffix": ("error", _harmonize("c.png", "m.png", "o.xyz")),
    "very long path": ("error", _harmonize("c.png", "m.png", "x" * 300 + ".png")),
    "palette": ("ok", _harmonize("palette.png", "m.png", "o.png")),
    "16-bit": ("ok", _harmonize("sixteen.png", "m.png", "o.png")),
    "CMYK": ("ok", _harmonize("cmyk.jpg", "m.png", "o.png")),
    "RGBA, alpha as mask": ("ok", _harmonize("rgba.png", None, "o.png")),
    "EXIF-rotated": ("ok", _harmonize("rotated.jpg", "m.png", "o.png")),  # stored 40x60, upright 60x40
    "empty mask": ("ok", _harmonize("c.png", "empty_mask.png", "o.png")),
    "full mask": ("ok", _harmonize("c.png", "full_mask.png", "o.png")),
    "soft mask": ("ok", _harmonize("c.png", "soft_mask.png", "o.png")),
    "dithered mask": ("ok", _harmonize("c.png", "dithered_mask.png", "o.png")),
    "non-UTF-8 name": ("ok", _harmonize(os.fsdecode(b"\xff\xfe.png"), "m.png", os.fsdecode(b"\xfe.png"))),
}

BAD_CONFIG = "model:\n  class_path: harmony.methods.Composite\n  init_args:\n    bogus: 1\n"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


OTHER_COMMANDS = {
    "score: missing root": lambda s, o: ["score", "--data-root", str(s / "nope"), "--predictions", str(s)],
    "score: not a root": lambda s, o: ["score", "--data-root", str(s), "--predictions", str(s)],
    "check-data: missing root": lambda s, o: ["check-data", "--root", str(s / "nope")],
    "stats: missing root": lambda s, o: ["stats", "--root", str(s / "nope"), "--json", str(o / "s.json")],
    "stats: unknown option": lambda s, o: ["stats", "--root", str(s), "--output-dir", str(o)],
    "harmonize: missing option": lambda s, o: ["harmonize", "--method", "Composite"],
    "classify: corrupt checkpoint": lambda s, o: [
        "classify",
        "--checkpoint",
        str(s / "text.png"),
        "--images",
        str(s),
        "--output",
        str(o / "scores.csv"),
    ],
    "harmonize: corrupt checkpoint": lambda s, o: [
        "harmonize",
        "--checkpoint",
        str(s / "truncated.png"),
        "--composite",
        str(s / "c.png"),
        "--mask",
        str(s / "m.png"),
        "--output",
        str(o / "o.png"),
    ],
    "import-weights: missing release": lambda s, o: [
        "import-weights",
        "--from",
        "pih",
        str(s / "nope.pth"),
        "--output",
        str(o / "pih.ckpt"),
    ],
    "import-weights: not a checkpoint": lambda s, o: [
        "import-weights",
        "--from",
        "pih",
        str(s / "text.png"),
        "--output",
        str(o / "pih.ckpt"),
    ],
    "generate-composites: corrupt checkpoint": lambda s, o: [
        "generate-composites",
        "--checkpoint",
        str(s / "truncated.png"),
        "--images",
        str(s),
        "--masks",
        str(s),
        "--output",
        str(o / "generated"),
    ],
    "build-rpharmony: missing folder": lambda s, o: [
        "build-rpharmony",
        "--images",
        str(s / "nope"),
        "--masks",
        str(s),
        "--output",
        str(o / "rpharmony"),
    ],
    "build-human-harmony: missing checkpoint": lambda s, o: [
        "build-human-harmony",
        "--images",
        str(s),
        "--parts",
        str(s),
        "--inverse-checkpoint",
        str(s / "nope.ckpt"),
        "--classifier",
        str(s / "nope.ckpt"),
        "--output",
        str(o / "human"),
    ],
    "summary: missing config": lambda s, o: ["summary", "--config", str(s / "nope.yaml")],
    "fit: bad YAML": lambda s, o: ["fit", "--config", str(_write(s / "bad.yaml", "model: [unclosed\n"))],
    "fit: unknown config key": lambda s, o: ["fit", "--config", str(_write(s / "unknown.yaml", BAD_CONFIG))],
    "fit: unknown option": lambda s, o: ["fit", "--trainer.bogus=1"],
    "test: unknown config key": lambda s, o: [
        "test",
        "--config",
        str(_write(s / "unknown.yaml", BAD_CONFIG)),
    ],
    "predict: missing data root": lambda s, o: [
        "predict",
        "--config",
        str(REPO_ROOT / "tests" / "configs" / "baseline_iharmony4.yaml"),
        f"--data.init_args.root={s / 'nope'}",
        "--trainer.logger=false",
    ],
}


def _run(arguments: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    status = main(arguments)
    return status, capsys.readouterr().err


def _check(expected: str, status: int, stderr: str, out: Path) -> None:
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("harmony: error:")]
    if expected == "error":
        assert status == 2 and len(errors) == 1, stderr
        assert "\n" not in errors[0]
    else:
        assert status == 0 and not errors, stderr
    assert not [path.name for path in out.rglob(".*")], "a temporary file was left behind"


@pytest.mark.parametrize("case", HARMONIZE)
def test_harmonize_bad_inputs(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expected, arguments = HARMONIZE[case]
    source, out = _inputs(tmp_path), tmp_path / "out"
    out.mkdir()
    status, stderr = _run(arguments(source, out), capsys)
    _check(expected, status, stderr, out)
    if expected == "error":
        assert not list(out.iterdir())


@pytest.mark.parametrize("case", OTHER_COMMANDS)
def test_other_commands_bad_inputs(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source, out = _inputs(tmp_path), tmp_path / "out"
    out.mkdir()
    status, stderr = _run(OTHER_COMMANDS[case](source, out), capsys)
    _check("error", status, stderr, out)
    assert not list(out.iterdir())


@pytest.mark.parametrize(
    ("where", "code"),
    [("os.replace", errno.ENOSPC), ("tempfile.mkstemp", errno.EROFS), ("tempfile.mkstemp", errno.EACCES)],
)
def test_disk_full_and_read_only_destinations_are_one_line(
    where: str, code: int, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Simulated: the tests may run as root, for whom a read-only folder is writable."""
    source, out = _inputs(tmp_path), tmp_path / "out"
    out.mkdir()
    module_name, function = where.split(".")
    module = getattr(harmony.data.io, module_name)
    real = getattr(module, function)

    def failing(*args: object, **kwargs: object) -> object:
        if where == "os.replace":
            real(*args, **kwargs)  # the file is complete, then the disk is full at the rename
        raise OSError(code, os.strerror(code), str(out))

    monkeypatch.setattr(module, function, failing)
    status, stderr = _run(_harmonize("c.png", "m.png", "o.png")(source, out), capsys)
    assert status == 2 and stderr.strip().splitlines()[-1].startswith(f"harmony: error: {out}: ")
    assert "Traceback" not in stderr
    if where == "tempfile.mkstemp":
        assert not list(out.iterdir())


def test_score_output_on_an_unwritable_path_is_one_line_after_the_table(
    iharmony4_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from harmony.data.records import list_iharmony4

    (tmp_path / "a_file").write_text("x")
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    for record in list_iharmony4(iharmony4_root, "test"):
        (predictions / record.composite.name).symlink_to(record.composite)
    arguments = ["score", "--data-root", str(iharmony4_root), "--predictions", str(predictions)]
    status, stderr = _run([*arguments, "--output", str(tmp_path / "a_file" / "s.json")], capsys)
    assert status == 2 and "Traceback" not in stderr
    assert (
        stderr.strip().splitlines()[-1]
        == f"harmony: error: {tmp_path / 'a_file'}: is a file, so nothing can be written under it"
    )


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    source = _inputs(tmp_path)
    arguments = [
        sys.executable,
        "-m",
        "harmony",
        "--debug",
        *_harmonize("nope.png", "m.png", "o.png")(source, tmp_path),
    ]
    result = subprocess.run(arguments, capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_a_multi_file_result_appears_whole_or_not_at_all(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The image and its exports are renamed into place together: a failing export leaves neither."""
    from harmony.commands import harmonize

    source, out = _inputs(tmp_path), tmp_path / "out"
    out.mkdir()

    def failing_export(*args: object, **kwargs: object) -> str:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / "curves.json"))

    from harmony.methods.base import HarmonizationModule

    monkeypatch.setattr(harmonize, "curves_to_json", failing_export)
    monkeypatch.setattr(HarmonizationModule, "estimate_adjustments", _fake_adjustments, raising=False)
    monkeypatch.setattr(HarmonizationModule, "apply_adjustments", staticmethod(_fake_apply), raising=False)
    monkeypatch.setattr(HarmonizationModule, "num_knots", 32, raising=False)
    arguments = [
        *_harmonize("c.png", "m.png", "o.png")(source, out),
        "--export-curves",
        str(out / "curves.json"),
    ]
    status, stderr = _run(arguments, capsys)
    assert status == 2 and "No space left" in stderr, stderr
    assert not list(out.iterdir())


def _fake_adjustments(self: object, composite: np.ndarray, mask: np.ndarray) -> object:
    from harmony.methods.semi_supervised_parametric import ParametricAdjustments

    return ParametricAdjustments(np.linspace(0, 1, 32, dtype=np.float32)[None].repeat(3, 0), None)


def _fake_apply(
    composite: np.ndarray, mask: np.ndarray, adjustments: object, in_place: bool = False
) -> np.ndarray:
    return composite


@pytest.fixture(scope="module")
def large_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """12 composites of 1200x900 (noise, slow to encode) and their masks."""
    folder = tmp_path_factory.mktemp("large")
    composites, masks = folder / "c", folder / "m"
    composites.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(0)
    mask = np.zeros((900, 1200), np.uint8)
    mask[200:700, 300:900] = 255
    for index in range(12):
        Image.fromarray(rng.integers(0, 256, (900, 1200, 3), dtype=np.uint8)).save(
            composites / f"{index}.png"
        )
        Image.fromarray(mask).save(masks / f"{index}.png")
    return composites, masks


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_in_a_folder_run_leaves_no_temporary_file(
    signum: int, large_folder: tuple[Path, Path], tmp_path: Path
) -> None:
    """The signal arrives while the images are written. A re-run skips what is done and finishes."""
    (composites, masks), out = large_folder, tmp_path / "out"
    command = [sys.executable, "-m", "harmony", "harmonize", "--method", "ReinhardLabTransfer"]
    command += ["--composite", str(composites), "--mask", str(masks), "--output", str(out)]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    deadline = time.monotonic() + 120
    # Once the first image is whole, the next one is being written when the signal arrives.
    while not (out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir())):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.02)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == (143 if signum == signal.SIGTERM else 130), stderr
    assert "Traceback" not in stderr
    assert not [path.name for path in out.iterdir() if path.name.startswith(".")]
    written = len(list(out.iterdir()))
    assert 0 < written < 12
    rerun = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
    assert rerun.returncode == 0 and f"skipped {written} of 12" in rerun.stderr
    assert len(list(out.iterdir())) == 12


class _Payload:
    """Unpickling this creates a file: what a malicious checkpoint would do with a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (Path(self.marker),))


def test_a_malicious_checkpoint_does_not_run(
    iharmony4_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from harmony.commands.reproduce_table1 import load_method
    from harmony.errors import HarmonyInputError

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"_class_path": _Payload(marker)}}, evil)
    source = _inputs(tmp_path)
    harmonize = ["harmonize", "--checkpoint", str(evil), "--composite", str(source / "c.png")]
    status, stderr = _run(
        [*harmonize, "--mask", str(source / "m.png"), "--output", str(tmp_path / "o.png")], capsys
    )
    assert status == 2 and "does not unpickle" in stderr and not marker.exists()
    config = REPO_ROOT / "tests" / "configs" / "baseline_iharmony4.yaml"
    test = ["test", "--config", str(config), f"--data.init_args.root={iharmony4_root}", f"--ckpt_path={evil}"]
    status, stderr = _run([*test, "--trainer.logger=false"], capsys)
    assert status != 0 and "Traceback" not in stderr and not marker.exists()
    with pytest.raises(HarmonyInputError, match="does not unpickle"):
        load_method(config, evil)
    assert not marker.exists()
    (tmp_path / "config.yaml").unlink(missing_ok=True)
