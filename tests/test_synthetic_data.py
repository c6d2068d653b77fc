from __future__ import annotations

import pytest
import torch

from monai_hqanogan.data import add_synthetic_lesions, make_ellipse_images, make_toy_lesion_set


def test_ellipses_are_deterministic_and_in_range():
    a, b = make_ellipse_images(6, 24, seed=3), make_ellipse_images(6, 24, seed=3)
    assert torch.equal(a, b) and a.shape == (6, 1, 24, 24)
    assert float(a.min()) == -1.0 and float(a.max()) <= 1.0
    assert not torch.equal(a, make_ellipse_images(6, 24, seed=4))
    assert make_ellipse_images(2, 8, channels=3).shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="num_images"):
        make_ellipse_images(0, 8)


def test_lesions_change_the_image_only_near_their_mask_and_stay_inside():
    images = make_ellipse_images(16, 32, seed=0)
    lesioned, masks = add_synthetic_lesions(images, seed=1)
    assert lesioned.shape == images.shape and masks.shape == (16, 1, 32, 32)
    assert set(masks.unique().tolist()) <= {0.0, 1.0} and bool((masks.flatten(1).sum(1) > 0).all())
    inside = images > -0.8
    assert bool((masks.bool() <= inside).all())  # lesion masks lie inside the body
    assert bool((lesioned[~inside] == images[~inside]).all())  # background untouched
    change = (lesioned - images).abs()
    assert float(change[masks.bool()].mean()) > 0.2  # visible inside the mask
    assert float(lesioned.min()) >= -1 and float(lesioned.max()) <= 1
    # both brighter and darker lesions occur
    signs = [(lesioned[i] - images[i])[masks[i].bool()].mean().sign().item() for i in range(16)]
    assert 1.0 in signs and -1.0 in signs
    again, _ = add_synthetic_lesions(images, seed=1)
    assert torch.equal(again, lesioned)


def test_lesions_need_a_foreground():
    with pytest.raises(ValueError, match="no pixel above"):
        add_synthetic_lesions(torch.full((1, 1, 8, 8), -1.0))


def test_toy_lesion_set_layout():
    images, labels, masks = make_toy_lesion_set(5, size=16, seed=2)
    assert images.shape == (10, 1, 16, 16) and labels.tolist() == [0] * 5 + [1] * 5
    assert float(masks[:5].abs().sum()) == 0 and bool((masks[5:].flatten(1).sum(1) > 0).all())
