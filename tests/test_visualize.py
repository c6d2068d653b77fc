from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from monai_hqanogan.visualize import make_image_grid, save_image_grid


@pytest.mark.parametrize(
    "n, c, h, w, nrow, padding, rows, cols",
    [
        (5, 1, 4, 6, None, 1, 2, 3),  # ceil(sqrt(5)) = 3 columns, 2 rows
        (4, 3, 5, 5, None, 1, 2, 2),
        (1, 1, 8, 8, None, 2, 1, 1),
        (5, 1, 4, 4, 5, 0, 1, 5),
        (7, 3, 3, 2, 2, 1, 4, 2),
    ],
)
def test_grid_shape(n, c, h, w, nrow, padding, rows, cols):
    grid = make_image_grid(torch.zeros(n, c, h, w), nrow=nrow, padding=padding)
    assert grid.shape == (c, rows * (h + padding) + padding, cols * (w + padding) + padding)


def test_grid_layout_and_padding():
    n, h, w = 5, 4, 6
    images = torch.stack([torch.full((1, h, w), -1.0 + 0.4 * (i + 1)) for i in range(n)])  # -0.6 .. 1.0
    grid = make_image_grid(images)
    assert grid.shape == (1, 2 * (h + 1) + 1, 3 * (w + 1) + 1)
    assert grid.min() >= 0.0 and grid.max() <= 1.0
    for i in range(n):
        r, k = divmod(i, 3)
        tile = grid[0, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + k * (w + 1) : 1 + k * (w + 1) + w]
        assert torch.allclose(tile, torch.full_like(tile, (0.4 * (i + 1)) / 2.0), atol=1e-6)
    # padding lines and the empty sixth tile are black
    assert torch.equal(grid[0, 0], torch.zeros_like(grid[0, 0]))
    assert torch.equal(grid[0, :, 0], torch.zeros_like(grid[0, :, 0]))
    assert torch.equal(grid[0, h + 1], torch.zeros_like(grid[0, h + 1]))
    empty = grid[0, h + 2 : 2 * h + 2, 2 * (w + 1) + 1 : 3 * (w + 1)]
    assert torch.equal(empty, torch.zeros_like(empty))


@pytest.mark.parametrize(
    "value_range, inputs, expected",
    [
        ((-1.0, 1.0), [-1.0, 0.0, 1.0, -3.0, 2.0], [0.0, 0.5, 1.0, 0.0, 1.0]),
        ((0.0, 255.0), [0.0, 51.0, 255.0, 300.0, -1.0], [0.0, 0.2, 1.0, 1.0, 0.0]),
        ((2.0, 4.0), [2.0, 2.5, 3.0, 4.0, 10.0], [0.0, 0.25, 0.5, 1.0, 1.0]),
    ],
)
def test_grid_value_range(value_range, inputs, expected):
    images = torch.tensor(inputs).view(5, 1, 1, 1)
    grid = make_image_grid(images, nrow=5, value_range=value_range, padding=0)
    assert grid.shape == (1, 1, 5)
    assert torch.allclose(grid.flatten(), torch.tensor(expected), atol=1e-6)


def test_grid_does_not_modify_input_and_detaches():
    images = torch.randn(3, 1, 4, 4, requires_grad=True)
    before = images.detach().clone()
    grid = make_image_grid(images)
    assert not grid.requires_grad
    assert torch.equal(images.detach(), before)


@pytest.mark.parametrize("shape", [(0, 1, 4, 4), (1, 4, 4), (4, 4)])
def test_grid_bad_input_raises(shape):
    with pytest.raises(ValueError, match="non-empty"):
        make_image_grid(torch.zeros(*shape))
    with pytest.raises(ValueError):
        save_image_grid(torch.zeros(*shape), "unused.png")


@pytest.mark.parametrize("channels, mode", [(1, "L"), (3, "RGB")])
@pytest.mark.parametrize("scale", [1, 3])
def test_save_image_grid(tmp_path, channels, mode, scale):
    n, h, w = 5, 4, 6
    images = torch.rand(n, channels, h, w) * 2 - 1
    path = save_image_grid(images, tmp_path / "sub" / "grid.png", scale=scale)
    assert path == tmp_path / "sub" / "grid.png"
    assert path.is_file()
    with Image.open(path) as img:
        assert img.mode == mode
        assert img.size == (scale * (3 * (w + 1) + 1), scale * (2 * (h + 1) + 1))
        arr = np.asarray(img)
    grid = make_image_grid(images).numpy()
    expected = (grid * 255 + 0.5).astype(np.uint8)
    expected = expected[0] if channels == 1 else expected.transpose(1, 2, 0)
    if scale > 1:
        expected = expected.repeat(scale, axis=0).repeat(scale, axis=1)
    np.testing.assert_array_equal(arr, expected)


def test_save_image_grid_value_range_and_str_path(tmp_path):
    images = torch.full((2, 1, 3, 3), 128.0)
    path = save_image_grid(images, str(tmp_path / "g.png"), nrow=2, value_range=(0.0, 255.0))
    with Image.open(path) as img:
        arr = np.asarray(img)
    assert arr.shape == (5, 9)
    assert int(arr[1, 1]) == round(128 / 255 * 255)
    assert int(arr[0, 0]) == 0


def test_make_image_grid_refuses_an_empty_value_range():
    with pytest.raises(ValueError, match="low < high"):
        make_image_grid(torch.zeros(2, 1, 4, 4), value_range=(1.0, 1.0))


def test_save_image_grid_passes_padding(tmp_path):
    path = save_image_grid(torch.zeros(2, 1, 4, 4), tmp_path / "g.png", nrow=2, padding=3)
    with Image.open(path) as img:
        assert img.size == (2 * 4 + 3 * 3, 4 + 2 * 3)


def test_detection_panels_roc_and_histogram_are_written(tmp_path):
    from monai_hqanogan.visualize import (
        figure_to_image,
        plot_detection_panels,
        plot_roc_curves,
        plot_score_histogram,
        save_figure,
    )

    x = torch.rand(2, 1, 16, 16) * 2 - 1
    amap = torch.zeros(2, 1, 16, 16)
    amap[:, :, 4:8, 4:8] = 1.0
    fig = plot_detection_panels(
        x, x * 0.5, amap, pred_masks=amap > 0.5, gt_masks=amap > 0.5, scores=[0.3, 2.0], threshold=1.0
    )
    assert "normal, threshold 1.00" in fig.axes[0].get_title(loc="left")
    path = save_figure(fig, tmp_path / "panel.png")
    with Image.open(path) as img:
        assert img.size[0] > 500 and np.asarray(img.convert("L")).std() > 10  # non-empty picture

    roc = plot_roc_curves({"a": ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])})
    assert "AUROC 0.750" in roc.axes[0].get_legend().get_texts()[0].get_text()
    assert save_figure(roc, tmp_path / "roc.png").stat().st_size > 1000
    hist = plot_score_histogram([0.1, 0.2, 0.9, 1.1], [0, 0, 1, 1], threshold=0.5)
    arr = figure_to_image(hist)
    assert arr.dtype == np.uint8 and arr.shape[0] == 3 and arr.std() > 5
    with pytest.raises(ValueError, match="same non-zero number"):
        plot_detection_panels(x, x[:1], amap)
