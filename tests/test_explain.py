"""Tests for pneumo_ml.explain: Grad-CAM maps, localisation scores, overlays and figures (all data made here)."""
from __future__ import annotations

import io

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from PIL import Image
from torch import nn

from pneumo_ml.explain import (
    COLORBAR_LABEL,
    FOOTER,
    energy_in_mask,
    gradcam,
    gradcam_grid,
    localisation_scores,
    overlay,
    overlay_png,
    pick_examples,
    pointing_game,
    save_overlay,
    uniform_baseline,
)
from pneumo_ml.models import create_model, normalization
from pneumo_ml.transforms import BatchTransform

HALF = BatchTransform((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _model(name: str, size: int = 64) -> tuple[nn.Module, BatchTransform]:
    torch.manual_seed(0)
    model = create_model(name, pretrained="false", image_size=size)
    return model, BatchTransform(*normalization(model))


def _noise(n: int, h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w), dtype=np.uint8)


def _check_maps(maps: np.ndarray, shape: tuple[int, ...]) -> None:
    assert maps.shape == shape
    assert maps.dtype == np.float32
    assert not np.isnan(maps).any()
    assert maps.min() >= 0.0 and maps.max() <= 1.0


# ---------------------------------------------------------------- Grad-CAM: shapes, every model

@pytest.mark.parametrize("name", ["small_cnn", "resnet50", "densenet121", "vit_tiny"])
def test_gradcam_every_model_gives_normalised_maps(name):
    model, transform = _model(name)
    images = _noise(3)
    maps = {t: gradcam(model, name, images, transform, target=t, batch_size=2) for t in (0, 1)}
    for m in maps.values():
        _check_maps(m, (3, 64, 64))
        # each map is min-max normalised (max 1) or, without positive evidence, all zero
        assert all(np.isclose(x.max(), 1.0) or not x.any() for x in m)
    # a random head finds positive evidence for at least one class in each image: the maps are not all blank
    assert all(maps[0][i].max() == 1.0 or maps[1][i].max() == 1.0 for i in range(3))
    assert max(maps[0].std(), maps[1].std()) > 0.05


def test_gradcam_accepts_tensors_non_square_images_and_is_independent_of_batching():
    model, transform = _model("small_cnn")
    images = torch.from_numpy(_noise(5, 48, 80, seed=1))
    one_by_one = gradcam(model, "small_cnn", images, transform, batch_size=1)
    batched = gradcam(model, "small_cnn", images.numpy(), transform, batch_size=16)
    _check_maps(batched, (5, 48, 80))
    np.testing.assert_allclose(one_by_one, batched, atol=1e-5)
    assert gradcam(model, "small_cnn", images[:0], transform).shape == (0, 48, 80)


def test_gradcam_target_none_explains_the_predicted_class():
    model, transform = _model("small_cnn")
    model.eval()
    images = _noise(6, seed=2)
    with torch.no_grad():
        predicted = model(transform(torch.from_numpy(images))).argmax(1).numpy()
    by_class = [gradcam(model, "small_cnn", images, transform, target=t) for t in (0, 1)]
    expected = np.stack([by_class[c][i] for i, c in enumerate(predicted)])
    np.testing.assert_allclose(gradcam(model, "small_cnn", images, transform, target=None), expected, atol=1e-6)


def test_gradcam_runs_in_float32_under_autocast():
    model, transform = _model("small_cnn")
    images = _noise(2, seed=3)
    plain = gradcam(model, "small_cnn", images, transform)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = gradcam(model, "small_cnn", images, transform)
    np.testing.assert_allclose(under_autocast, plain, atol=1e-6)


def test_gradcam_rejects_augmenting_transform():
    model, _ = _model("small_cnn")
    with pytest.raises(ValueError, match="augment"):
        gradcam(model, "small_cnn", _noise(1), BatchTransform((0.5,) * 3, (0.5,) * 3, augment=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_gradcam_on_cuda_matches_cpu():
    model, transform = _model("small_cnn")
    images = _noise(4, seed=4)
    on_cpu = gradcam(model, "small_cnn", images, transform)
    model.cuda()
    with torch.autocast("cuda", dtype=torch.float16):
        on_gpu = gradcam(model, "small_cnn", torch.from_numpy(images).cuda(), transform)
    assert next(model.parameters()).is_cuda
    np.testing.assert_allclose(on_gpu, on_cpu, atol=1e-3)


# ---------------------------------------------------------------- Grad-CAM leaves the model as it was

@pytest.mark.parametrize("training", [True, False])
def test_gradcam_restores_modes_and_leaves_no_gradients(training):
    model, transform = _model("small_cnn")
    model.train(training)
    model.features[0][1].eval()  # a mixed state (a frozen BatchNorm) must come back exactly
    modes = [m.training for m in model.modules()]
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    gradcam(model, "small_cnn", _noise(3), transform)
    assert [m.training for m in model.modules()] == modes
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    for key, value in model.state_dict().items():  # eval during CAM: BatchNorm running statistics untouched
        assert torch.equal(value, stats[key]), key


def test_gradcam_works_on_frozen_model_and_keeps_it_frozen():
    model, transform = _model("vit_tiny")
    for p in model.parameters():
        p.requires_grad_(False)
    maps = gradcam(model, "vit_tiny", _noise(2), transform, target=None)
    _check_maps(maps, (2, 64, 64))
    assert maps.std() > 0.05
    assert not any(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------- Grad-CAM is right, not just shaped right

class _BrightnessNet(nn.Module):
    """Class 1 = "bright stuff": channel 0 = ReLU(x) counts for it, channel 1 = ReLU(-x) against it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0] = 1.0
            self.conv.weight[1, 0] = -1.0
        self.features = nn.Sequential(self.conv, nn.ReLU(), nn.MaxPool2d(4))
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[-2.0, 1.0], [2.0, -1.0]]))

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


def test_gradcam_highlights_the_region_that_drives_the_class():
    model = _BrightnessNet()
    images = np.zeros((2, 32, 32), dtype=np.uint8)
    images[0, 4:12, 20:28] = 255  # top right
    images[1, 20:28, 4:12] = 255  # bottom left
    squares = images == 255
    maps = gradcam(model, model.features, images, HALF, target=1)
    for heat, square in zip(maps, squares):
        y, x = np.unravel_index(heat.argmax(), heat.shape)
        assert square[y, x]
        assert heat[square].sum() / heat.sum() > 0.5
    against = gradcam(model, model.features, images, HALF, target=0)
    for heat, square in zip(against, squares):
        y, x = np.unravel_index(heat.argmax(), heat.shape)
        assert not square[y, x]
        inner = np.argwhere(square)[[0, -1]] + [[2], [-2]]  # the square less the 2-px blur of upsampling
        assert heat[inner[0, 0]:inner[1, 0] + 1, inner[0, 1]:inner[1, 1] + 1].max() < 0.05


class _PatchMean(nn.Module):
    """A stand-in last ViT block: the class token becomes the mean of the incoming patch tokens."""

    def forward(self, x):
        return torch.cat([x[:, 1:].mean(dim=1, keepdim=True), x[:, 1:]], dim=1)


def test_vit_gradcam_lights_up_the_patch_that_matters():
    """A hand-wired vit_tiny (4x4 patches at 64 px) whose class-1 logit is the mean brightness of the patches.

    Only the bright patch has positive evidence, so the map must sit on it: at grid (row 0, col 2), which a
    row/column mix-up would move to (2, 0), and not blank (the block's output patch tokens carry no gradient
    under class-token pooling).
    """
    model, _ = _model("vit_tiny")
    with torch.no_grad():
        model.pos_embed.zero_()
        model.cls_token.zero_()
        model.patch_embed.proj.weight.zero_()
        model.patch_embed.proj.weight[0] = 1.0 / (3 * 16 * 16)
        model.patch_embed.proj.bias.zero_()
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.head.weight[1, 0], model.head.weight[0, 0] = 1.0, -1.0
    model.blocks = nn.Sequential(_PatchMean())
    model.norm = nn.Identity()
    images = np.zeros((1, 64, 64), dtype=np.uint8)
    images[0, 0:16, 32:48] = 255
    heat = gradcam(model, "vit_tiny", images, HALF, target=1)[0]
    y, x = np.unravel_index(heat.argmax(), heat.shape)
    assert 0 <= y < 16 and 32 <= x < 48
    assert heat[0:16, 32:48].mean() > 0.5
    assert heat[32:, :].max() < 0.1  # patches two rows away see none of it


def test_vit_gradcam_matches_a_hand_computed_cam():
    """The real timm vit_tiny: Captum via the token-grid view equals Grad-CAM of the log-odds z1 - z0 computed by
    hand on the tokens."""
    model, transform = _model("vit_tiny")
    model.eval()
    images = _noise(2, seed=5)
    saved = {}

    def keep(_module, args):
        saved["tokens"] = args[0]

    handle = model.blocks[-1].register_forward_pre_hook(keep)
    try:
        logits = model(transform(torch.from_numpy(images)))
    finally:
        handle.remove()
    grads = torch.autograd.grad((logits[:, 1] - logits[:, 0]).sum(), saved["tokens"])[0][:, 1:]
    tokens = saved["tokens"][:, 1:].detach()
    cam = F.relu((tokens * grads.mean(dim=1, keepdim=True)).sum(-1)).reshape(2, 1, 4, 4)
    cam = F.interpolate(cam, size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    lo, hi = cam.amin(dim=(1, 2), keepdim=True), cam.amax(dim=(1, 2), keepdim=True)
    expected = ((cam - lo) / (hi - lo)).numpy()
    model.zero_grad(set_to_none=True)
    maps = gradcam(model, "vit_tiny", images, transform, target=1)
    assert maps.std() > 0.05
    np.testing.assert_allclose(maps, expected, atol=1e-4)


# ---------------------------------------------------------------- the CAM of a trained model finds the lesion

def _blob_images(rng: np.random.Generator, n: int, pneumonia: bool, size: int = 64, radius: float = 8.0):
    """Noisy gradient backgrounds; PNEUMONIA adds a bright blob at a random place. Masks: 128 lungs, 255 blob."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    lo, hi = size // 8, size - size // 8
    images, masks = [], []
    for _ in range(n):
        angle = rng.uniform(0, 2 * np.pi)
        image = 70 + 50 * (np.cos(angle) * xx + np.sin(angle) * yy) / size + rng.normal(0, 12, (size, size))
        mask = np.zeros((size, size), np.uint8)
        mask[lo:hi, lo:hi] = 128
        if pneumonia:
            cy, cx = rng.uniform(lo + radius, hi - radius, 2)
            d2 = (yy - cy) ** 2 + (xx - cx) ** 2
            image = image + 90 * np.exp(-d2 / (2 * (radius / 1.5) ** 2))
            mask[d2 <= radius ** 2] = 255
        images.append(np.clip(image, 0, 255).astype(np.uint8))
        masks.append(mask)
    return np.stack(images), np.stack(masks)


def test_trained_small_cnn_gradcam_points_at_the_lesion():
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(0)
        rng = np.random.default_rng(0)
        normal, _ = _blob_images(rng, 24, False)
        sick, _ = _blob_images(rng, 24, True)
        held_out, held_out_masks = _blob_images(rng, 16, True)
        held_out_normal, _ = _blob_images(rng, 16, False)
        x = torch.from_numpy(np.concatenate([normal, sick]))
        y = torch.tensor([0] * 24 + [1] * 24)
        model, transform = _model("small_cnn")
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
        order = torch.Generator().manual_seed(0)
        model.train()
        for _ in range(15):
            perm = torch.randperm(len(x), generator=order)
            for start in range(0, len(x), 16):
                batch = perm[start:start + 16]
                loss = F.cross_entropy(model(transform(x[batch])), y[batch])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        optimiser.zero_grad(set_to_none=True)
        model.eval()
        with torch.no_grad():
            p_sick = model(transform(torch.from_numpy(held_out))).softmax(1)[:, 1]
            p_normal = model(transform(torch.from_numpy(held_out_normal))).softmax(1)[:, 1]
        assert p_sick.min() > p_normal.max(), "precondition: the model separates the held-out images"

        maps = gradcam(model, "small_cnn", held_out, transform, target=1)
        scores = localisation_scores(maps, held_out_masks)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    assert scores["cam_images"] == 16
    assert 0.05 < scores["cam_pointing_game_uniform"] < 0.25
    assert scores["cam_pointing_game"] >= scores["cam_pointing_game_uniform"] + 0.3, scores
    assert scores["cam_energy_in_mask"] > scores["cam_energy_in_mask_uniform"], scores


# ---------------------------------------------------------------- localisation scores on hand-made cases

def _lesion_mask(size: int = 20) -> np.ndarray:
    """Lung field rows/cols 2..17 (16x16 = 256 px), lesion rows/cols 5..8 (4x4 = 16 px), at `size` scale."""
    s = size // 20
    mask = np.zeros((size, size), np.uint8)
    mask[2 * s:18 * s, 2 * s:18 * s] = 128
    mask[5 * s:9 * s, 5 * s:9 * s] = 255
    return mask


def _peak_at(y: int, x: int, size: int = 20) -> np.ndarray:
    heat = np.zeros((size, size), np.float32)
    heat[y, x] = 1.0
    return heat


def test_pointing_game_hits_misses_and_tolerance():
    mask = _lesion_mask()
    assert pointing_game([_peak_at(6, 6), _peak_at(15, 15)], [mask, mask]) == 0.5
    near = _peak_at(10, 6)  # two rows below the lesion
    assert pointing_game([near], [mask], tolerance_px=2) == 1.0
    assert pointing_game([near], [mask], tolerance_px=1) == 0.0
    assert pointing_game([_peak_at(9, 6)], [mask]) == 1.0  # default tolerance: at least 1 px
    assert pointing_game([_peak_at(9, 6)], [mask], tolerance_px=0) == 0.0
    assert pointing_game([np.zeros((20, 20))], [mask]) == 0.0  # a blank map points nowhere
    # masks at another resolution are resized (nearest) to the heatmap; lesion-free masks are not scored
    assert pointing_game(np.stack([_peak_at(6, 6), _peak_at(15, 15)]), [_lesion_mask(40), np.zeros((40, 40))]) == 1.0
    assert np.isnan(pointing_game([_peak_at(6, 6)], [np.full((20, 20), 128, np.uint8)]))


def test_pointing_game_uses_the_middle_of_a_plateau():
    mask = np.zeros((20, 20), np.uint8)
    mask[8:12, 0:4] = 255
    heat = np.zeros((20, 20), np.float32)
    heat[4:16, 0:6] = 1.0  # an upsampled border cell: its first pixel (4, 0) is outside the lesion, its middle inside
    assert pointing_game([heat], [mask], tolerance_px=0) == 1.0


def test_energy_in_mask_known_answers():
    mask = _lesion_mask()
    inside = np.zeros((20, 20), np.float32)
    inside[5:9, 5:9] = 1.0
    half = inside.copy()
    half[15, 15] = 16.0  # as much mass outside as inside
    assert energy_in_mask([inside], [mask]) == pytest.approx(1.0)
    assert energy_in_mask([half], [mask]) == pytest.approx(0.5)
    assert energy_in_mask([np.ones((20, 20))], [mask]) == pytest.approx(16 / 400)
    assert energy_in_mask([inside, np.zeros((20, 20))], [mask, mask]) == pytest.approx(0.5)
    assert energy_in_mask([inside], [_lesion_mask(60)]) == pytest.approx(1.0)
    assert energy_in_mask([inside], [(mask == 255)]) == pytest.approx(1.0)  # boolean lesion masks too


def test_uniform_baseline_is_the_lesion_share_of_the_lungs():
    mask = _lesion_mask()
    base = uniform_baseline([mask, np.full((20, 20), 128, np.uint8)], tolerance_px=1)
    assert base["energy_in_mask"] == pytest.approx(16 / 256)
    assert base["pointing_game"] == pytest.approx((16 + 4 * 4) / 256)  # 4x4 lesion dilated by a 1-px disk
    assert uniform_baseline([mask], tolerance_px=0)["pointing_game"] == pytest.approx(16 / 256)
    lungs = (mask >= 128).astype(np.float32)  # a uniform map over the lungs scores the baseline energy
    assert energy_in_mask([lungs], [mask]) == pytest.approx(base["energy_in_mask"])


def test_localisation_scores_report_cam_and_chance_level():
    masks = [_lesion_mask(40), _lesion_mask(40), np.full((40, 40), 128, np.uint8)]
    heat = [_peak_at(6, 6), _peak_at(15, 15), _peak_at(6, 6)]
    scores = localisation_scores(heat, masks, tolerance_px=1)
    assert scores["cam_images"] == 2
    assert scores["cam_pointing_game"] == 0.5
    assert scores["cam_energy_in_mask"] == pytest.approx(0.5)
    assert scores["cam_energy_in_mask_uniform"] == pytest.approx(16 / 256)
    assert scores["cam_pointing_game_uniform"] == pytest.approx(32 / 256)


# ---------------------------------------------------------------- overlays, figures, example picking

def luminance(rgb) -> float:
    r, g, b = (float(v) for v in rgb[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def test_overlay_blends_grey_image_and_colormap():
    image = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (8, 1))
    heat = np.zeros((8, 16), np.float32)
    out = overlay(image, heat)
    assert out.shape == (8, 16, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(overlay(image, heat, alpha=0.0), np.repeat(image[..., None], 3, axis=2))
    cold = overlay(image, heat, alpha=1.0)
    assert (cold == cold[0, 0]).all() and luminance(cold[0, 0]) < 10  # the map alone, no evidence: near black
    hot = overlay(image, np.ones((8, 16)), alpha=1.0)
    assert luminance(hot[0, 0]) > 200  # most evidence: bright
    # perceptually uniform: more evidence is always lighter
    ramp = overlay(np.zeros((1, 64), np.uint8), np.linspace(0, 1, 64)[None], alpha=1.0)[0]
    assert (np.diff([luminance(c) for c in ramp]) > 0).all()
    assert overlay(image, np.ones((4, 8)), alpha=1.0).shape == (8, 16, 3)  # heatmap resized to the image


def test_overlay_png_is_an_rgb_png_and_leaves_pyplot_alone(tmp_path):
    figures = plt.get_fignums()
    image = _noise(1, 48, 40)[0]
    heat = np.linspace(0, 1, 48 * 40, dtype=np.float32).reshape(48, 40)
    data = overlay_png(image, heat, title="PNEUMONIA p=0.91")
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    decoded = Image.open(io.BytesIO(data))
    assert decoded.mode == "RGB" and decoded.size[0] > 100
    path = save_overlay(tmp_path / "cam.png", image, heat)
    assert Image.open(path).mode == "RGB"
    assert plt.get_fignums() == figures


def test_gradcam_grid_has_one_image_axis_per_case():
    images, heats = _noise(5, 32, 32), np.random.default_rng(0).random((5, 32, 32), dtype=np.float32)
    titles = [f"TP  label PNEUMONIA  pred PNEUMONIA  p=0.9{i}" for i in range(5)]
    fig = gradcam_grid(list(images), list(heats), titles, columns=4)
    assert isinstance(fig, Figure)
    image_axes = [ax for ax in fig.axes if ax.images]
    assert len(image_axes) == 5
    assert [ax.get_title() for ax in image_axes] == titles
    assert any(ax.get_ylabel() == COLORBAR_LABEL for ax in fig.axes if not ax.images)
    assert fig.get_supxlabel() == FOOTER
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"
    with pytest.raises(ValueError):
        gradcam_grid(list(images), list(heats), titles[:2])


def test_pick_examples_most_confident_of_each_kind():
    targets = [1, 1, 0, 0, 1, 0, 1, 0]
    probs = [0.9, 0.6, 0.7, 0.2, 0.3, 0.1, 0.95, 0.8]
    assert pick_examples(targets, probs, 0.5) == [(6, "TP"), (0, "TP"), (7, "FP"), (2, "FP"), (4, "FN"),
                                                  (5, "TN"), (3, "TN")]
    assert pick_examples(np.array(targets), torch.tensor(probs), 0.5, per_kind=1) == [
        (6, "TP"), (7, "FP"), (4, "FN"), (5, "TN")]
    assert pick_examples([0, 0], [0.1, 0.2], 0.5) == [(0, "TN"), (1, "TN")]


def test_flat_maps_are_named_and_the_colour_bar_runs_from_more_to_less():
    from pneumo_ml.explain import is_flat, with_colour_bar
    assert is_flat(np.zeros((7, 7))) and is_flat(np.full((7, 7), 0.3)) and not is_flat(np.eye(7))
    rgb = np.full((100, 80, 3), 128, dtype=np.uint8)
    framed = with_colour_bar(rgb)
    assert framed.shape[0] == 100 and framed.shape[1] > 80 and np.array_equal(framed[:, :80], rgb)
    bar = framed[:, 84]  # a column through the scale
    lightness = [luminance(c) for c in bar]
    assert (np.diff(lightness) < 0).all()  # "more" (lighter) at the top, "less" (darker) below
