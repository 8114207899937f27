"""The shared evaluator: hand-computed values, protocol details, grouping and the JSON schema."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import structural_similarity as skimage_ssim

from harmony.errors import HarmonyInputError
from harmony.metrics import (
    PSNR_CAP_DB,
    HarmonizationEvaluator,
    LpipsScorer,
    format_results_header,
    format_results_table,
    get_protocol,
    infer_iharmony4_subset,
    per_image_metrics,
    resize_image,
    resize_mask,
    results_to_json,
    structural_similarity,
    to_uint8_image,
)

IHARMONY4 = get_protocol("iharmony4")
NO_PASTE = get_protocol("iharmony4", paste_background=False)
BCMI = get_protocol("bcmi")


def _images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, size, size), generator=generator, dtype=torch.uint8)


def _square_mask(size: int, side: int) -> torch.Tensor:
    mask = torch.zeros(1, 1, size, size)
    mask[..., :side, :side] = 1.0
    return mask


def test_hand_computed_mse_fmse_psnr() -> None:
    # 8×8 black target; the prediction is +10 on a 2×2 foreground square and +6 on 4 background pixels.
    target = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    prediction = target.clone()
    prediction[..., :2, :2] = 10
    prediction[..., 7, 4:8] = 6
    mask = _square_mask(8, 2)

    values = per_image_metrics(prediction, target, mask, protocol=NO_PASTE)

    squared_error_sum = 3 * (4 * 100 + 4 * 36)
    expected_mse = squared_error_sum / (8 * 8 * 3)
    assert values["mse"].item() == pytest.approx(expected_mse, rel=1e-12)
    assert values["fmse"].item() == pytest.approx(4 * 3 * 100 / (3 * 4), rel=1e-12)
    assert values["psnr"].item() == pytest.approx(10 * math.log10(255**2 / expected_mse), rel=1e-12)
    assert values["fg_ratio"].item() == pytest.approx(4 / 64)
    assert all(value.dtype == torch.float64 for value in values.values())


def test_fmse_ignores_the_background() -> None:
    target = _images(2, 16)
    prediction = target.clone()
    prediction[:, :, :4, :4] = 255 - prediction[:, :, :4, :4]
    mask = _square_mask(16, 4).expand(2, 1, 16, 16)
    noisy_background = prediction.clone()
    noisy_background[:, :, 8:, 8:] = 0

    clean = per_image_metrics(prediction, target, mask, protocol=NO_PASTE)
    noisy = per_image_metrics(noisy_background, target, mask, protocol=NO_PASTE)

    torch.testing.assert_close(clean["fmse"], noisy["fmse"])
    assert (noisy["mse"] > clean["mse"]).all()


def test_background_paste_replaces_the_predictions_background() -> None:
    target = _images(1, 16, seed=1)
    composite = target.clone()
    composite[..., :4, :4] = 0  # the unharmonized foreground
    prediction = _images(1, 16, seed=2)  # wrong everywhere, background included
    mask = _square_mask(16, 4)

    pasted = per_image_metrics(prediction, target, mask, composite, protocol=IHARMONY4)
    foreground_only = target.clone()
    foreground_only[..., :4, :4] = prediction[..., :4, :4]
    reference = per_image_metrics(foreground_only, target, mask, protocol=NO_PASTE)
    unpasted = per_image_metrics(prediction, target, mask, composite, protocol=NO_PASTE)

    for name in ("mse", "psnr", "fmse", "ssim"):
        torch.testing.assert_close(pasted[name], reference[name])
    torch.testing.assert_close(pasted["fmse"], unpasted["fmse"])
    assert unpasted["mse"].item() > 10 * pasted["mse"].item()
    with pytest.raises(ValueError, match="composite"):
        per_image_metrics(prediction, target, mask, protocol=IHARMONY4)


def test_empty_mask_gives_nan_fmse_and_is_counted() -> None:
    protocol = dataclasses.replace(NO_PASTE, size=16)
    target = _images(2, 16)
    prediction = torch.zeros_like(target)
    mask = torch.zeros(2, 1, 16, 16)
    mask[1, :, :8, :8] = 1.0

    values = per_image_metrics(prediction, target, mask, protocol=protocol)
    assert math.isnan(values["fmse"][0].item())
    assert math.isfinite(values["fmse"][1].item())

    evaluator = HarmonizationEvaluator(protocol)
    evaluator.update(prediction, target, mask, None, ["HCOCO", "HCOCO"])
    overall = evaluator.compute()["all"]
    assert overall["n"] == 2
    assert overall["n_empty_mask"] == 1
    assert overall["fmse"] == pytest.approx(values["fmse"][1].item())
    assert overall["mse"] == pytest.approx(values["mse"].mean().item())


def test_identical_images_cap_psnr_without_crashing() -> None:
    protocol = dataclasses.replace(IHARMONY4, size=16)
    target = _images(3, 16)
    mask = _square_mask(16, 5).expand(3, 1, 16, 16)
    evaluator = HarmonizationEvaluator(protocol)
    evaluator.update(target, target, mask, target, ["HFlickr"] * 3)
    overall = evaluator.compute()["all"]
    assert overall["psnr"] == PSNR_CAP_DB
    assert overall["mse"] == 0.0
    assert overall["fmse"] == 0.0
    assert overall["ssim"] == pytest.approx(1.0)
    assert overall["n_psnr_capped"] == 3


def test_soft_masks_are_thresholded_at_half() -> None:
    # 127 on 0–255 is background, 128 foreground.
    soft = np.array([[127 / 255, 128 / 255], [0.3, 0.7]], dtype=np.float32)
    np.testing.assert_array_equal(resize_mask(soft, 2), [[0.0, 1.0], [0.0, 1.0]])
    # Resizing is nearest on the 0–255 mask, then > 127 is foreground.
    wide = np.random.default_rng(0).uniform(0, 1, (6, 10)).astype(np.float32)
    expected = (
        np.asarray(Image.fromarray(np.round(wide * 255).astype(np.uint8)).resize((4, 4), Image.NEAREST)) > 127
    )
    binary = resize_mask(wide, 4)
    assert binary.dtype == np.float32
    np.testing.assert_array_equal(binary, expected.astype(np.float32))

    # A soft mask reaching per_image_metrics is thresholded too, never used as weights.
    target = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    prediction = torch.full_like(target, 20)
    soft_mask = torch.full((1, 1, 8, 8), 0.3)
    soft_mask[..., :2, :2] = 0.7
    values = per_image_metrics(prediction, target, soft_mask, protocol=NO_PASTE)
    assert values["fmse"].item() == pytest.approx(400.0)
    assert values["fg_ratio"].item() == pytest.approx(4 / 64)


def test_resize_mask_binarises_without_resizing_at_size() -> None:
    soft = np.array([[0.2, 0.6], [0.5, 0.49]], dtype=np.float32)
    np.testing.assert_array_equal(resize_mask(soft, 2), [[0.0, 1.0], [1.0, 0.0]])


def test_resize_image_matches_pil_and_is_a_no_op_at_size() -> None:
    image = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(image).resize((16, 16), Image.BILINEAR))
    np.testing.assert_array_equal(resize_image(image, 16, Image.BILINEAR), expected)
    square = image[:16, :16]
    assert resize_image(square, 16, Image.BICUBIC) is square


@pytest.mark.parametrize(
    ("foreground_pixels", "bucket"),
    [
        (19, "fg_0_5"),
        (20, "fg_5_15"),
        (59, "fg_5_15"),
        (60, "fg_15_100"),
        (399, "fg_15_100"),
        (400, "fg_15_100"),
    ],
)
def test_bucket_edges(foreground_pixels: int, bucket: str) -> None:
    # At 20×20 the edges 0.05 and 0.15 are exactly 20 and 60 pixels; 400 pixels is ratio 1.0.
    protocol = dataclasses.replace(NO_PASTE, size=20)
    mask = torch.zeros(1, 1, 400)
    mask[..., :foreground_pixels] = 1.0
    evaluator = HarmonizationEvaluator(protocol)
    image = _images(1, 20)
    evaluator.update(image, image, mask.view(1, 1, 20, 20), None, ["HCOCO"])
    buckets = [group for group in evaluator.compute() if group.startswith("fg_")]
    assert buckets == [bucket]


def test_bcmi_psnr_uses_the_predictions_range_and_no_paste() -> None:
    target = torch.full((1, 3, 8, 8), 100, dtype=torch.uint8)
    prediction = target.clone()
    prediction[..., 0, 0] = 50
    prediction[..., 0, 1] = 150
    composite = torch.zeros_like(target)
    mask = _square_mask(8, 1)

    values = per_image_metrics(prediction, target, mask, composite, protocol=BCMI)

    mse = 3 * (50**2 + 50**2) / (8 * 8 * 3)
    assert values["mse"].item() == pytest.approx(mse)
    assert values["psnr"].item() == pytest.approx(10 * math.log10(100**2 / mse))
    fixed = per_image_metrics(prediction, target, mask, protocol=NO_PASTE)
    assert fixed["psnr"].item() == pytest.approx(10 * math.log10(255**2 / mse))


def test_bcmi_constant_prediction_is_clipped_not_infinite() -> None:
    target = _images(1, 8)
    prediction = torch.full_like(target, 7)
    values = per_image_metrics(prediction, target, _square_mask(8, 2), protocol=BCMI)
    assert values["psnr"].item() == -PSNR_CAP_DB


def test_ssim_matches_scikit_image_with_data_range_255() -> None:
    target = _images(3, 32, seed=3)
    noise = torch.randint(-30, 31, target.shape, generator=torch.Generator().manual_seed(4))
    prediction = (target.int() + noise).clamp(0, 255).to(torch.uint8)
    ours = structural_similarity(prediction, target)
    for index in range(3):
        reference = skimage_ssim(
            prediction[index].permute(1, 2, 0).numpy(),
            target[index].permute(1, 2, 0).numpy(),
            data_range=255,
            channel_axis=-1,
        )
        assert ours[index].item() == pytest.approx(reference, abs=1e-12)
    # The range is fixed: a dark image pair is not rescaled to its own (small) range.
    dark_target = target // 16
    dark_prediction = prediction // 16
    dark = structural_similarity(dark_prediction, dark_target)[0].item()
    reference = skimage_ssim(
        dark_prediction[0].permute(1, 2, 0).numpy(),
        dark_target[0].permute(1, 2, 0).numpy(),
        data_range=255,
        channel_axis=-1,
    )
    assert dark == pytest.approx(reference, abs=1e-12)


def test_two_updates_equal_one() -> None:
    protocol = dataclasses.replace(IHARMONY4, size=16)
    target, prediction, composite = _images(6, 16, 0), _images(6, 16, 1), _images(6, 16, 2)
    mask = torch.zeros(6, 1, 16, 16)
    for index in range(6):
        mask[index, :, : index * 3, :8] = 1.0
    subsets = ["HCOCO", "HAdobe5k", "HCOCO", "Hday2night", "HFlickr", "HAdobe5k"]

    whole = HarmonizationEvaluator(protocol)
    whole.update(prediction, target, mask, composite, subsets)
    split = HarmonizationEvaluator(protocol)
    split.update(prediction[:2], target[:2], mask[:2], composite[:2], subsets[:2])
    split.update(prediction[2:], target[2:], mask[2:], composite[2:], subsets[2:])

    expected = whole.compute()
    assert split.compute() == expected
    assert list(expected) == [
        "HCOCO",
        "HAdobe5k",
        "HFlickr",
        "Hday2night",
        "all",
        "fg_0_5",
        "fg_5_15",
        "fg_15_100",
    ]
    assert expected["HCOCO"]["n"] == 2
    assert expected["all"]["n_empty_mask"] == 1


def test_evaluator_accepts_float_images_in_unit_range() -> None:
    protocol = dataclasses.replace(NO_PASTE, size=16)
    target = _images(2, 16)
    mask = _square_mask(16, 4).expand(2, 1, 16, 16)
    as_uint8 = HarmonizationEvaluator(protocol)
    as_uint8.update(target, target // 2, mask, None, ["a", "b"])
    as_float = HarmonizationEvaluator(protocol)
    as_float.update(target.float() / 255, (target // 2).float() / 255, mask, None, ["a", "b"])
    assert as_float.compute() == as_uint8.compute()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_uint8_image(target.float())


def test_evaluator_rejects_images_not_at_protocol_size() -> None:
    evaluator = HarmonizationEvaluator()
    image = _images(1, 32)
    with pytest.raises(ValueError, match="256"):
        evaluator.update(image, image, _square_mask(32, 4), image, ["HCOCO"])


def test_groups_order() -> None:
    protocol = dataclasses.replace(NO_PASTE, size=16)
    evaluator = HarmonizationEvaluator(protocol)
    image = _images(4, 16)
    mask = _square_mask(16, 8).expand(4, 1, 16, 16)
    evaluator.update(image, image, mask, None, ["zeta", "HFlickr", "alpha", "HCOCO"])
    assert list(evaluator.compute()) == ["HCOCO", "HFlickr", "alpha", "zeta", "all", "fg_15_100"]


def test_compute_before_update_reports_an_empty_all_group() -> None:
    with pytest.warns(UserWarning):
        results = HarmonizationEvaluator().compute()
    assert list(results) == ["all"]
    assert results["all"]["n"] == 0
    assert math.isnan(results["all"]["psnr"])


def test_results_json_schema_and_table() -> None:
    protocol = dataclasses.replace(IHARMONY4, size=16)
    evaluator = HarmonizationEvaluator(protocol)
    target = _images(2, 16)
    mask = torch.zeros(2, 1, 16, 16)
    mask[0, :, :2, :2] = 1.0
    evaluator.update(_images(2, 16, 5), target, mask, target, ["HCOCO", "HCOCO"])
    results = evaluator.compute()

    payload = results_to_json(evaluator.protocol, results)
    assert set(payload) == {"protocol", "image_size", "paste_background", "results"}
    assert (payload["protocol"], payload["image_size"], payload["paste_background"]) == (
        "iharmony4",
        16,
        True,
    )
    assert list(payload["results"]) == ["HCOCO", "all", "fg_0_5"]
    for summary in payload["results"].values():
        assert set(summary) == {"n", "mse", "psnr", "fmse", "ssim", "n_empty_mask", "n_psnr_capped"}
    json.loads(json.dumps(payload, allow_nan=False))

    header = format_results_header(evaluator.protocol, results)
    assert "iharmony4" in header and "16×16" in header and "paste on" in header and "2 images" in header
    table = format_results_table(results, title=header).splitlines()
    assert table[0] == header
    assert table[1].split() == ["group", "n", "MSE", "PSNR", "fMSE", "SSIM"]
    assert [line.split()[0] for line in table[2:]] == ["HCOCO", "all", "fg_0_5"]
    assert len({len(line) for line in table[1:]}) == 1


def test_unknown_protocol_lists_the_choices() -> None:
    with pytest.raises(HarmonyInputError, match="iharmony4, bcmi"):
        get_protocol("dovenet")


def test_protocol_definitions() -> None:
    assert (IHARMONY4.size, IHARMONY4.resample, IHARMONY4.paste_background, IHARMONY4.psnr_range) == (
        256,
        Image.BILINEAR,
        True,
        "fixed",
    )
    assert (BCMI.size, BCMI.resample, BCMI.paste_background, BCMI.psnr_range) == (
        256,
        Image.BICUBIC,
        False,
        "prediction",
    )
    assert get_protocol("bcmi", paste_background=True).paste_background


def test_subset_inference_from_file_names() -> None:
    assert infer_iharmony4_subset("a0001_1_2.jpg") == "HAdobe5k"
    assert infer_iharmony4_subset("d1048-20120628-200951_1_3") == "Hday2night"
    assert infer_iharmony4_subset("c12_1_1") == "HCOCO"
    assert infer_iharmony4_subset("f3_1_1") == "HFlickr"
    assert infer_iharmony4_subset("x3_1_1") is None


def test_lpips_without_weights_is_reported_not_random(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.warns(UserWarning, match="LPIPS unavailable: .*AlexNet"):
        evaluator = HarmonizationEvaluator(dataclasses.replace(IHARMONY4, size=16), compute_lpips=True)
    assert not evaluator.computes_lpips
    assert "alexnet" in evaluator.lpips_unavailable_reason
    image = _images(1, 16)
    evaluator.update(image, image, _square_mask(16, 4), image, ["HCOCO"])
    assert "lpips" not in evaluator.compute()["all"]


def test_lpips_scorer_feeds_minus_one_to_one() -> None:
    seen: list[torch.Tensor] = []

    class RecordingNetwork(torch.nn.Module):
        def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            seen.extend([prediction, target])
            return (prediction - target).abs().mean(dim=(1, 2, 3), keepdim=True)

    scorer = LpipsScorer(RecordingNetwork())
    black = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    white = torch.full_like(black, 255)
    distance = scorer(black, white)
    assert seen[0].min().item() == -1.0 and seen[1].max().item() == 1.0
    torch.testing.assert_close(distance, torch.full((2,), 2.0, dtype=torch.float64))


def test_gathered_states_equal_one_process_seeing_everything() -> None:
    """Simulate a DDP sync of two processes (the second one's states are handed over by the gather)."""
    protocol = dataclasses.replace(NO_PASTE, size=16)
    prediction, target = _images(5, 16, 0), _images(5, 16, 1)
    mask = torch.zeros(5, 1, 16, 16)
    mask[..., :6, :6] = 1.0
    subsets = ["HCOCO", "local", "HCOCO", "HFlickr", "remote"]
    local = HarmonizationEvaluator(protocol, sync_on_compute=False)
    remote = HarmonizationEvaluator(protocol)
    local.update(prediction[:3], target[:3], mask[:3], None, subsets[:3])
    remote.update(prediction[3:], target[3:], mask[3:], None, subsets[3:])
    everything = HarmonizationEvaluator(protocol)
    everything.update(prediction, target, mask, None, subsets)

    # States are gathered in registration order; an empty list state travels as an empty tensor.
    remote_states = [
        torch.cat(state) if state else torch.zeros(0, dtype=torch.float64)
        for state in (getattr(remote, name) for name in remote._reductions)
    ]

    def gather(tensor: torch.Tensor, group: object = None) -> list[torch.Tensor]:
        return [tensor, remote_states.pop(0)]

    local.sync(dist_sync_fn=gather, distributed_available=lambda: True)
    gathered = local.compute()
    expected = everything.compute()
    # A subset only the other process saw is reported by name: the names travel with the states.
    assert list(gathered) == ["HCOCO", "HFlickr", "local", "remote", "all", "fg_5_15"]
    assert gathered == expected


def test_a_process_without_data_does_not_corrupt_subset_codes() -> None:
    protocol = dataclasses.replace(NO_PASTE, size=16)
    seen = HarmonizationEvaluator(protocol, sync_on_compute=False)
    idle = HarmonizationEvaluator(protocol)
    image = _images(2, 16)
    seen.update(image, image, _square_mask(16, 4).expand(2, 1, 16, 16), None, ["Hday2night", "HAdobe5k"])
    # torchmetrics gathers an empty tensor of the metric's dtype from a process that saw nothing.
    placeholder = torch.tensor([], dtype=idle.dtype)

    def gather(tensor: torch.Tensor, group: object = None) -> list[torch.Tensor]:
        return [tensor, placeholder]

    seen.sync(dist_sync_fn=gather, distributed_available=lambda: True)
    assert list(seen.compute())[:2] == ["HAdobe5k", "Hday2night"]
