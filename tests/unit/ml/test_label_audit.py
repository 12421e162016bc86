"""The suspect-label rule: confident disagreement over a real share of the image."""

import numpy as np
import pytest

from maskfind_pipeline.ml.segmentation.config import AuditConfig
from maskfind_pipeline.ml.segmentation.label_audit import audit

SQUARE = np.zeros((32, 32), bool)
SQUARE[8:24, 8:24] = True


def _confident(mask: np.ndarray, sure: float = 0.97) -> np.ndarray:
    return np.where(mask, sure, 1.0 - sure).astype(np.float32)


def test_a_label_the_confident_model_agrees_with_is_clean_and_a_contradicted_one_suspect() -> None:
    probabilities = np.stack([_confident(SQUARE)] * 3)
    shifted = np.roll(SQUARE, 12, axis=1)
    labels = np.stack([SQUARE, np.ones_like(SQUARE), shifted])
    verdict = audit(probabilities, labels, AuditConfig())
    assert verdict.suspect.tolist() == [False, True, True]
    assert verdict.ious[0] == pytest.approx(1.0)
    assert verdict.ious[1] == pytest.approx(SQUARE.mean())


def test_only_confident_pixels_count_so_an_unsure_boundary_does_not_blame_the_label() -> None:
    probabilities = _confident(SQUARE)
    grown = np.zeros_like(SQUARE)
    grown[6:26, 6:26] = True
    probabilities[grown & ~SQUARE] = 0.5  # the model is unsure around the object
    verdict = audit(probabilities[None], grown[None], AuditConfig())
    assert verdict.ious[0] == pytest.approx(1.0) and not verdict.suspect[0]


def test_an_unsure_model_judges_nothing() -> None:
    probabilities = np.full((1, 32, 32), 0.6, np.float32)
    verdict = audit(probabilities, np.ones((1, 32, 32), bool), AuditConfig())
    assert verdict.confident_share[0] == 0.0 and not verdict.suspect[0]


def test_a_tiny_disagreement_decides_nothing_however_low_its_iou() -> None:
    speck = np.zeros_like(SQUARE)
    speck[0:3, 0:3] = True  # 0.9 % of the image, e.g. an object cut by the border
    verdict = audit(_confident(np.zeros_like(SQUARE))[None], speck[None], AuditConfig())
    assert verdict.ious[0] == 0.0 and not verdict.suspect[0]
    strict = audit(
        _confident(np.zeros_like(SQUARE))[None], speck[None], AuditConfig(min_disagreement=0.0)
    )
    assert strict.suspect[0]


def test_uint8_probabilities_are_read_on_the_0_255_scale() -> None:
    as_uint8 = (_confident(SQUARE) * 255).round().astype(np.uint8)[None]
    verdict = audit(as_uint8, np.ones((1, 32, 32), bool), AuditConfig())
    assert verdict.suspect[0] and verdict.confident_share[0] == 1.0


def test_shapes_must_match() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        audit(np.zeros((1, 8, 8)), np.zeros((1, 4, 4), bool), AuditConfig())
