"""``harmony demo``: the page, uploads that come back as ``harmony harmonize``'s bytes, errors in the page.

One real ``harmony demo`` process serves the module (started as a user would, on a free port); the
HTTP tests talk to it with urllib and the browser test drives it with headless Chromium.
"""

from __future__ import annotations

import io
import json
import re
import select
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harmony.cli import main as harmony_main
from harmony.commands import harmonize
from harmony.commands.demo import DIFFERENCE_GAIN, TRAINING_FREE_METHODS, model_choices
from tests.conftest import fit_tiny, write_composite_and_mask

METHOD = "ReinhardLabTransfer"
NO_BROWSER = "Chromium/chromedriver not installed: apt-get install chromium chromium-driver"


@pytest.fixture(scope="module", autouse=True)
def _harmony_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # The server and the in-process `harmony harmonize` share one ONNX export cache, not the user's.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HARMONY_CACHE", str(tmp_path_factory.mktemp("harmony_cache")))
        yield


@pytest.fixture(scope="module")
def parametric_checkpoint(iharmony4_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SemiSupervisedParametric trained for one step."""
    run = tmp_path_factory.mktemp("parametric_run")
    return fit_tiny("semi_supervised_parametric_iharmony4.yaml", iharmony4_root, run, 1)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Uploads: a composite and its mask, one with the mask as alpha, and bad ones."""
    folder = tmp_path_factory.mktemp("uploads")
    composite, mask, composite_array, mask_array = write_composite_and_mask(folder)
    transparent = folder / "alpha.png"
    Image.fromarray(np.dstack([composite_array, mask_array])).save(transparent)
    small_mask = folder / "small_mask.png"
    Image.fromarray(mask_array[:10, :20]).save(small_mask)
    not_an_image = folder / "notes.png"
    not_an_image.write_text("not a picture\n")
    return {"c": composite, "m": mask, "alpha": transparent, "small": small_mask, "notes": not_an_image}


@pytest.fixture(scope="module")
def server(parametric_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running ``harmony demo`` (the checkpoint, ReinhardLabTransfer, Composite); yields its URL."""
    folder = tmp_path_factory.mktemp("server")
    command = [sys.executable, "-m", "harmony", "demo", "--checkpoint", str(parametric_checkpoint)]
    command += ["--method", METHOD, "--method", "Composite", "--port", "0", "--device", "cpu"]
    with (folder / "stderr.txt").open("w") as stderr:
        process = subprocess.Popen(command, cwd=folder, stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        ready, _, _ = select.select([process.stdout], [], [], 120)
        line = process.stdout.readline() if ready else ""
        found = re.search(r"http://\S+/", line)
        assert found, f"harmony demo printed no URL: {line!r} {(folder / 'stderr.txt').read_text()}"
        yield found.group(0)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def upload(url: str, model: str | None, **files: Path) -> tuple[int, dict]:
    """POST a multipart form to the demo's ``/harmonize``, as the page does; the status and the JSON."""
    boundary = uuid.uuid4().hex
    body = b""
    if model is not None:
        body += f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{model}\r\n'.encode()
    for field, path in files.items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{path.name}"\r\n'
        body += f"{head}Content-Type: application/octet-stream\r\n\r\n".encode() + path.read_bytes() + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    request = urllib.request.Request(url + "harmonize", body, headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read()


def cli_output(tmp_path: Path, source: list[str], composite: Path, mask: Path | None, lut: bool) -> tuple:
    """What ``harmony harmonize`` writes for these files: the PNG's bytes and the LUT's (or ``None``)."""
    output, cube = tmp_path / "cli.png", tmp_path / "cli.cube"
    arguments = [*source, "--composite", str(composite), "--output", str(output), "--device", "cpu"]
    arguments += ["--mask", str(mask)] if mask is not None else []
    arguments += ["--export-lut", str(cube)] if lut else []
    assert harmonize.main(arguments) == 0
    return output.read_bytes(), cube.read_bytes() if lut else None


def decoded(content: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(content)).convert("RGB"))


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--checkpoint", "missing.ckpt"], "missing.ckpt: checkpoint not found"),
        (["--method", "DiffHarmony"], "argument --method: invalid choice: 'DiffHarmony'"),
        (["--port", "65536"], "not a port number (0-65535): '65536'"),
    ],
)
def test_bad_arguments_are_one_line(
    arguments: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert harmony_main(["demo", *arguments]) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("harmony: error: ") and expected in stderr and stderr.count("\n") == 1


def test_a_taken_port_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert harmony_main(["demo", "--method", METHOD, "--port", str(port), "--device", "cpu"]) == 2
    assert f"harmony: error: cannot serve on 127.0.0.1:{port}: " in capsys.readouterr().err


def test_the_default_menu_is_the_training_free_methods_and_the_quickstart_checkpoint() -> None:
    import harmony.methods

    assert set(TRAINING_FREE_METHODS) <= set(harmony.methods.__all__)
    assert list(model_choices([], [])) == list(TRAINING_FREE_METHODS)
    Path("checkpoints").mkdir()
    Path("checkpoints/quickstart.ckpt").touch()  # the working folder is the test's own
    assert list(model_choices([], [])) == ["checkpoints/quickstart.ckpt", *TRAINING_FREE_METHODS]


def test_the_page_has_the_form_and_the_models_and_loads_nothing_from_outside(
    server: str, parametric_checkpoint: Path
) -> None:
    with urllib.request.urlopen(server, timeout=60) as response:
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/html")
        page = response.read().decode()
    for part in ('<form id="form"', 'id="composite"', 'id="mask"', 'id="harmonize"'):
        assert part in page
    options = re.findall(r"<option value=\"([^\"]*)\">", page)
    assert options == [str(parametric_checkpoint), METHOD, "Composite"]
    assert not re.search(r"https?://|(src|href)=[\"']?//", page)


@pytest.mark.parametrize("source", ["method", "checkpoint"])
def test_an_upload_is_harmony_harmonize_s_result_bit_for_bit(
    source: str, server: str, inputs: dict[str, Path], parametric_checkpoint: Path, tmp_path: Path
) -> None:
    parametric = source == "checkpoint"
    model = str(parametric_checkpoint) if parametric else METHOD
    status, result = upload(server, model, composite=inputs["c"], mask=inputs["m"])
    assert status == 200, result
    arguments = ["--checkpoint", model] if parametric else ["--method", model]
    expected_png, expected_cube = cli_output(tmp_path, arguments, inputs["c"], inputs["m"], lut=parametric)
    base = f"{server}results/{result['result']}/"
    harmonized = fetch(base + "harmonized.png")
    assert harmonized == expected_png
    assert result["harmonized_name"] == "c_harmonized.png" and result["model"] == model
    composite = np.asarray(Image.open(inputs["c"]).convert("RGB"))
    assert np.array_equal(decoded(fetch(base + "composite.png")), composite)
    difference = np.abs(decoded(harmonized).astype(int) - composite) * DIFFERENCE_GAIN
    assert np.array_equal(decoded(fetch(base + "difference.png")), difference.clip(0, 255))
    if parametric:
        assert result["lut_name"] == "c.cube" and fetch(base + "lut.cube") == expected_cube
    else:
        assert result["lut_name"] is None


def test_without_a_mask_the_composite_s_transparency_is_the_mask(
    server: str, inputs: dict[str, Path], tmp_path: Path
) -> None:
    status, result = upload(server, METHOD, composite=inputs["alpha"])
    assert status == 200, result
    expected, _ = cli_output(tmp_path, ["--method", METHOD], inputs["alpha"], None, lut=False)
    assert fetch(f"{server}results/{result['result']}/harmonized.png") == expected


@pytest.mark.parametrize(
    ("model", "files", "expected"),
    [
        (METHOD, {"composite": "notes", "mask": "m"}, "notes.png: cannot decode image"),
        (
            METHOD,
            {"composite": "c", "mask": "small"},
            "small_mask.png: mask is 20x10 but image c.png is 70x45",
        ),
        (METHOD, {"composite": "c"}, "c.png: no --mask given and the image has no transparency"),
        ("Nope", {"composite": "c", "mask": "m"}, "unknown model 'Nope': choose one of "),
        (METHOD, {"mask": "m"}, "no composite uploaded"),
        (None, {"composite": "c", "mask": "m"}, "no model chosen"),
    ],
    ids=[
        "not an image",
        "mask size differs",
        "no mask and no alpha",
        "unknown model",
        "no composite",
        "no model",
    ],
)
def test_a_bad_upload_is_a_one_line_json_error(
    model: str | None, files: dict[str, str], expected: str, server: str, inputs: dict[str, Path]
) -> None:
    status, body = upload(server, model, **{field: inputs[name] for field, name in files.items()})
    assert status == 400 and list(body) == ["error"]
    assert expected in body["error"] and "\n" not in body["error"]
    assert "harmony-demo-" not in body["error"]  # the uploads' own names, not their temporary copies


def test_a_forgotten_result_is_a_json_404(server: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as raised:
        fetch(f"{server}results/unknown/harmonized.png")
    assert raised.value.code == 404 and "harmonize again" in json.loads(raised.value.read())["error"]


def chrome() -> object:
    """Headless Chromium through the system's chromedriver (skips the test when either is missing)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip(f"selenium is not installed; {NO_BROWSER}")
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip(NO_BROWSER)
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.binary_location = browser
    return webdriver.Chrome(options=options, service=Service(driver))


IMAGES_SHOWN = """return !document.getElementById("results").hidden
    && ["composite", "harmonized", "difference"].every((name) => {
        const image = document.getElementById(name + "-image");
        return image.complete && image.naturalWidth > 0;
    });"""


def test_in_a_headless_browser(
    server: str, inputs: dict[str, Path], parametric_checkpoint: Path, tmp_path: Path
) -> None:
    driver = chrome()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    try:
        driver.get(server)
        driver.find_element(By.ID, "composite").send_keys(str(inputs["c"]))
        driver.find_element(By.ID, "mask").send_keys(str(inputs["m"]))
        Select(driver.find_element(By.ID, "model")).select_by_visible_text(str(parametric_checkpoint))
        driver.find_element(By.ID, "harmonize").click()
        WebDriverWait(driver, 120).until(lambda d: d.execute_script(IMAGES_SHOWN))
        download = driver.find_element(By.ID, "download-png")
        assert download.get_attribute("download") == "c_harmonized.png"
        arguments = ["--checkpoint", str(parametric_checkpoint)]
        expected_png, expected_cube = cli_output(tmp_path, arguments, inputs["c"], inputs["m"], lut=True)
        assert fetch(download.get_attribute("href")) == expected_png
        lut = driver.find_element(By.ID, "download-lut")
        assert lut.is_displayed() and fetch(lut.get_attribute("href")) == expected_cube
        width = driver.execute_script('return document.getElementById("harmonized-image").naturalWidth')
        assert width == 70

        driver.get(server)
        driver.find_element(By.ID, "composite").send_keys(str(inputs["notes"]))
        driver.find_element(By.ID, "mask").send_keys(str(inputs["m"]))
        driver.find_element(By.ID, "harmonize").click()
        error = driver.find_element(By.ID, "error")
        WebDriverWait(driver, 60).until(lambda d: error.is_displayed())
        assert "notes.png: cannot decode image" in error.text
        assert not driver.find_element(By.ID, "results").is_displayed()
    finally:
        driver.quit()
