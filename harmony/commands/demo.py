"""``harmony demo``: a local web page to try harmonization models on your own composites.

Upload a composite and its mask (or a composite whose transparency is the mask), pick a checkpoint or a
training-free method, press Harmonize and see the composite, the harmonized image and their difference
side by side, with the harmonized PNG to download and, for parametric models (SemiSupervisedParametric),
the ``.cube`` LUT of their curves. The result is ``harmony harmonize``'s, bit for bit: the page runs the
same code on the uploaded files. ``--checkpoint`` and ``--method`` may be repeated and mixed; with
neither, the training-free methods are offered, and ``checkpoints/quickstart.ckpt`` when it exists.
Each model is loaded when first used and then kept. The page loads nothing from the internet.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations, which name classes
# imported inside create_app (so that `harmony demo --help` does not import FastAPI); evaluated when the
# endpoints are defined, they need not be found among this module's globals.
import argparse
import html
import io
import secrets
import socket
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from harmony.commands.arguments import ToolArgumentParser
from harmony.errors import HarmonyInputError

if TYPE_CHECKING:
    import numpy as np
    from fastapi import FastAPI

TRAINING_FREE_METHODS = ("ReinhardLabTransfer", "HistogramMatching", "Composite")
"""The methods of :mod:`harmony.methods` that need no weights (the first is the page's default, so it is not
Composite, which changes nothing)."""

QUICKSTART_CHECKPOINT = Path("checkpoints/quickstart.ckpt")
"""What ``harmony quickstart`` writes; offered by default when it exists."""

DIFFERENCE_GAIN = 4
"""The difference image is ``|harmonized - composite| x DIFFERENCE_GAIN``: small changes become visible."""

KEPT_RESULTS = 16
"""Results kept in memory for the page to show and download; older ones are forgotten."""

MEDIA_TYPES = {".png": "image/png", ".cube": "text/plain; charset=utf-8"}


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the page's model menu: a checkpoint or a training-free method (exactly one is set).

    Args:
        checkpoint: A checkpoint written by ``harmony fit``.
        method: A training-free method's class name.
    """

    checkpoint: Path | None = None
    method: str | None = None

    @property
    def label(self) -> str:
        """How the menu shows it, also its value in the form."""
        return str(self.checkpoint) if self.checkpoint is not None else str(self.method)


@dataclass(frozen=True)
class Upload:
    """An uploaded file: the name the browser sent and its bytes."""

    name: str
    content: bytes


def model_choices(checkpoints: list[Path], methods: list[str]) -> dict[str, ModelChoice]:
    """The model menu, by label: the checkpoints, then the methods (the defaults when both are empty).

    Raises:
        HarmonyInputError: A checkpoint file is missing (told at start rather than on first use).
    """
    if not checkpoints and not methods:
        checkpoints = [QUICKSTART_CHECKPOINT] if QUICKSTART_CHECKPOINT.is_file() else []
        methods = list(TRAINING_FREE_METHODS)
    for checkpoint in checkpoints:
        if not checkpoint.is_file():
            raise HarmonyInputError(checkpoint, "checkpoint not found")
    choices = [ModelChoice(checkpoint=path) for path in checkpoints] + [
        ModelChoice(method=m) for m in methods
    ]
    return {choice.label: choice for choice in choices}


def _saved_upload(folder: Path, upload: Upload, role: str) -> Path:
    """Write an upload under ``folder`` with its own name, or ``<role><suffix>`` when that name is unsafe.

    The name is kept because ``harmony harmonize`` puts the composite's stem in the LUT's title, and the
    suffix because some readers go by it (16-bit PNG).
    """
    name = Path(upload.name).name
    if name in ("", ".", "..") or "\x00" in name or len(name.encode("utf-8", "surrogateescape")) > 200:
        suffix = Path(name).suffix
        name = role + (suffix if suffix[1:].isalnum() and len(suffix) <= 10 else "")
    folder.mkdir()
    path = folder / name
    path.write_bytes(upload.content)
    return path


def _png(image: "np.ndarray") -> bytes:
    """An ``H×W×3`` ``uint8`` array as PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


class Demo:
    """The demo's state: the model menu, the models loaded so far and the latest results.

    One harmonization runs at a time (a lock): the models are shared and a local demo has one user; it
    also keeps two first requests from loading the same checkpoint twice. The results have their own lock,
    so the page can fetch one result's images while the next is computed.

    Args:
        choices: The model menu (:func:`model_choices`).
        device: Where the models run: ``auto``, ``cpu`` or ``cuda``, as ``harmony harmonize --device``.
    """

    def __init__(self, choices: dict[str, ModelChoice], device: str) -> None:
        self.choices = choices
        self.device = device
        # What load_method returns: a HarmonizationModule, or an ONNX Runtime harmonizer.
        self._models: dict[str, Any] = {}
        self._results: OrderedDict[str, dict[str, bytes]] = OrderedDict()
        self._harmonizing = threading.Lock()
        self._keeping = threading.Lock()

    def _model(self, label: str) -> Any:
        """The model of a menu entry, loaded on first use (call while harmonizing, under its lock)."""
        from harmony.commands.harmonize import load_method

        if label not in self._models:
            choice = self.choices[label]
            self._models[label] = load_method(choice.checkpoint, choice.method, self.device)
        return self._models[label]

    def harmonize(self, label: str, composite: Upload, mask: Upload | None) -> dict[str, Any]:
        """Harmonize an upload with ``harmony harmonize``'s own code and keep the result.

        Args:
            label: The menu entry to use.
            composite: The composite.
            mask: Its mask, or ``None`` for the composite's alpha channel.

        Returns:
            The result's description for the page: the model's label, the result's id, the download names
            of the harmonized PNG and of the LUT (``None`` for a model without curves).

        Raises:
            HarmonyInputError: An unknown model, or an upload the readers refuse; the message names the
                uploaded files as the browser called them, not their temporary copies.
        """
        from harmony.commands.harmonize import Job, run_job
        from harmony.data.io import read_rgb

        if label not in self.choices:
            raise HarmonyInputError(None, f"unknown model {label!r}: choose one of {', '.join(self.choices)}")
        with tempfile.TemporaryDirectory(prefix="harmony-demo-") as temporary:
            folder = Path(temporary)
            composite_path = _saved_upload(folder / "composite", composite, "composite")
            mask_path = None if mask is None else _saved_upload(folder / "mask", mask, "mask")
            stem = composite_path.stem
            output = folder / "harmonized" / f"{stem}.png"
            output.parent.mkdir()
            try:
                with self._harmonizing:
                    model = self._model(label)
                    lut = folder / f"{stem}.cube" if hasattr(model, "estimate_adjustments") else None
                    job = Job(composite_path, mask_path, output, lut=lut, curves=None, shading=None)
                    run_job(model, job, lut_size=None)
            except HarmonyInputError as error:
                message = str(error)
                for path, upload in ((composite_path, composite), (mask_path, mask)):
                    if path is not None and upload is not None:
                        message = message.replace(str(path), upload.name or path.name)
                raise HarmonyInputError(None, message) from None
            before, after = read_rgb(composite_path), read_rgb(output)
            difference = (abs(after.astype("int16") - before) * DIFFERENCE_GAIN).clip(0, 255).astype("uint8")
            files = {
                "composite.png": _png(before),
                "harmonized.png": output.read_bytes(),
                "difference.png": _png(difference),
            }
            if lut is not None:
                files["lut.cube"] = lut.read_bytes()
        result = secrets.token_urlsafe(12)
        with self._keeping:
            self._results[result] = files
            while len(self._results) > KEPT_RESULTS:
                self._results.popitem(last=False)
        return {
            "model": label,
            "result": result,
            "harmonized_name": f"{stem}_harmonized.png",
            "lut_name": f"{stem}.cube" if lut is not None else None,
        }

    def result_file(self, result: str, name: str) -> bytes:
        """A file of a kept result (``composite.png``, ``harmonized.png``, ``difference.png``, ``lut.cube``).

        Raises:
            KeyError: No such result (forgotten) or file.
        """
        with self._keeping:
            return self._results[result][name]


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>harmony demo</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 80rem; }
  form { display: grid; grid-template-columns: max-content minmax(0, 32rem); gap: .7rem 1rem; }
  label small { color: #666; }
  #error { color: #b00020; font-weight: 600; }
  #results { margin-top: 1.5rem; }
  .figures { display: flex; gap: 1rem; flex-wrap: wrap; }
  figure { margin: 0; flex: 1 1 18rem; }
  figure img { width: 100%; border: 1px solid #ccc; image-rendering: pixelated; }
  figcaption { font-size: .9rem; margin-top: .3rem; }
  .downloads a { margin-right: 1.5rem; }
</style>
</head>
<body>
<h1>harmony demo</h1>
<form id="form">
  <label for="composite">Composite</label>
  <input id="composite" name="composite" type="file" accept="image/*" required>
  <label for="mask">Mask <small>(optional: else the composite's transparency)</small></label>
  <input id="mask" name="mask" type="file" accept="image/*">
  <label for="model">Model</label>
  <select id="model" name="model">__OPTIONS__</select>
  <span></span>
  <div><button id="harmonize" type="submit">Harmonize</button> <span id="progress"></span></div>
</form>
<p id="error" role="alert" hidden></p>
<section id="results" hidden>
  <div class="figures">
    <figure><img id="composite-image" alt="composite"><figcaption>Composite</figcaption></figure>
    <figure><img id="harmonized-image" alt="harmonized">
      <figcaption>Harmonized by <span id="result-model"></span></figcaption></figure>
    <figure><img id="difference-image" alt="difference">
      <figcaption>Difference: |harmonized &minus; composite| &times; __GAIN__</figcaption></figure>
  </div>
  <p class="downloads"><a id="download-png" download>Download the harmonized PNG</a>
    <a id="download-lut" download hidden>Download the .cube LUT (apply it through the mask)</a></p>
</section>
<script>
"use strict";
(() => {
  const form = document.getElementById("form");
  const button = document.getElementById("harmonize");
  const progress = document.getElementById("progress");
  const error = document.getElementById("error");
  const results = document.getElementById("results");

  function show(result) {
    const base = "results/" + result.result + "/";
    for (const name of ["composite", "harmonized", "difference"]) {
      document.getElementById(name + "-image").src = base + name + ".png";
    }
    document.getElementById("result-model").textContent = result.model;
    const png = document.getElementById("download-png");
    png.href = base + "harmonized.png";
    png.download = result.harmonized_name;
    const lut = document.getElementById("download-lut");
    lut.hidden = result.lut_name === null;
    if (result.lut_name !== null) {
      lut.href = base + "lut.cube";
      lut.download = result.lut_name;
    }
    results.hidden = false;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    // An empty file input still posts an empty part: without a file, send no mask at all.
    if (form.elements.mask.files.length === 0) data.delete("mask");
    button.disabled = true;
    error.hidden = true;
    progress.textContent = "Harmonizing\u2026";
    try {
      const response = await fetch("harmonize", { method: "POST", body: data });
      const body = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(body.error || "the server answered HTTP " + response.status);
      show(body);
    } catch (problem) {
      results.hidden = true;
      error.textContent = problem.message;
      error.hidden = false;
    } finally {
      button.disabled = false;
      progress.textContent = "";
    }
  });
})();
</script>
</body>
</html>
"""
"""The page; ``__OPTIONS__`` and ``__GAIN__`` are filled in (the CSS and JS braces rule out ``format``)."""


def page(choices: dict[str, ModelChoice]) -> str:
    """The page's HTML with the model menu."""
    options = "".join(
        f'<option value="{html.escape(label)}">{html.escape(label)}</option>' for label in choices
    )
    return PAGE.replace("__OPTIONS__", options).replace("__GAIN__", str(DIFFERENCE_GAIN))


def create_app(demo: Demo) -> "FastAPI":
    """The web application: the page, the harmonize endpoint and the results' files.

    Every error is JSON ``{"error": "<one line>"}``: 400 for a bad upload or model, 422 for a malformed
    request, 404 for a forgotten result, 500 (its traceback on the server's console) for a bug.
    """
    from fastapi import FastAPI, File, Form, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response

    app = FastAPI(title="harmony demo", docs_url=None, redoc_url=None, openapi_url=None)
    html_page = page(demo.choices)

    @app.exception_handler(HarmonyInputError)
    def bad_input(request: Request, error: HarmonyInputError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    def malformed(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(map(str, e.get('loc', ())[1:])) or 'request'}: {e['msg']}" for e in error.errors()
        ]
        return JSONResponse({"error": "; ".join(problems)}, status_code=422)

    @app.exception_handler(Exception)
    def internal(request: Request, error: Exception) -> JSONResponse:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return JSONResponse({"error": f"internal error: {type(error).__name__}: {first}"}, status_code=500)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return html_page

    @app.post("/harmonize")
    def harmonize(
        composite: Annotated[UploadFile | None, File()] = None,
        mask: Annotated[UploadFile | None, File()] = None,
        model: Annotated[str | None, Form()] = None,
    ) -> dict[str, Any]:
        uploads = {}
        for field, upload in (("composite", composite), ("mask", mask)):
            content = b"" if upload is None else upload.file.read()
            # A form's empty file input arrives as a nameless, empty file: no file.
            if upload is not None and (upload.filename or content):
                uploads[field] = Upload(upload.filename or "", content)
        if "composite" not in uploads:
            raise HarmonyInputError(None, "no composite uploaded")
        if model is None:
            raise HarmonyInputError(None, f"no model chosen: choose one of {', '.join(demo.choices)}")
        return demo.harmonize(model, uploads["composite"], uploads.get("mask"))

    @app.get("/results/{result}/{name}")
    def result_file(result: str, name: str) -> Response:
        try:
            content = demo.result_file(result, name)
        except KeyError:
            return JSONResponse(
                {"error": "no such result (only the latest are kept): harmonize again"}, status_code=404
            )
        return Response(content, media_type=MEDIA_TYPES[Path(name).suffix])

    return app


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one), bound before the URL is printed.

    Raises:
        HarmonyInputError: The address cannot be used (taken, not this machine's, unknown host).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
        listener.listen(128)
    except OSError as error:
        listener.close()
        raise HarmonyInputError(None, f"cannot serve on {host}:{port}: {error.strerror or error}") from None
    return listener


def _port(text: str) -> int:
    """An ``argparse`` type: a TCP port number, 0 meaning any free one."""
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"not a port number (0-65535): {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    parser = ToolArgumentParser(
        prog="harmony demo",
        description="Serve a local web page to harmonize your own composites with checkpoints and "
        "training-free methods (composite | harmonized | difference, PNG and .cube downloads). With no "
        f"--checkpoint or --method: {', '.join(TRAINING_FREE_METHODS)} and {QUICKSTART_CHECKPOINT} if "
        "it exists.",
        epilog="The result is `harmony harmonize`'s, bit for bit. Models load on first use.",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        action="append",
        default=[],
        help="a checkpoint written by `harmony fit` (repeat for several)",
    )
    parser.add_argument(
        "--method",
        action="append",
        default=[],
        choices=TRAINING_FREE_METHODS,
        help="a training-free method (repeat for several)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to serve on (default: this machine only)"
    )
    parser.add_argument("--port", type=_port, default=7860, help="port to serve on (0: any free one)")
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="where the networks run"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Serve until interrupted; returns the exit status (user errors raise ``HarmonyInputError``)."""
    args = build_parser().parse_args(argv)
    choices = model_choices(args.checkpoint, args.method)
    import uvicorn

    from harmony.commands.harmonize import resolve_device

    resolve_device(args.device)  # --device cuda without CUDA: say so now, not on the first upload
    app = create_app(Demo(choices, args.device))
    listener = listen(args.host, args.port)
    port = listener.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"harmony demo: open http://{host}:{port}/ in a browser (Ctrl+C stops)", flush=True)
    # Ctrl+C: uvicorn finishes the requests under way, then re-raises the signal (harmony: interrupted).
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[listener])
    return 0
