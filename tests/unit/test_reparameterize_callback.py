"""The fusion callback's settings: a count that would check nothing is one clear error, not a vacuous pass."""

import pytest

from reparam.callbacks import ReparameterizeCallback
from reparam.errors import UserError


@pytest.mark.parametrize(("verify_samples", "float64_samples"), [(0, 16), (256, 0)])
def test_a_fusion_check_on_no_images_is_refused(verify_samples: int, float64_samples: int) -> None:
    with pytest.raises(UserError, match="must be at least 1"):
        ReparameterizeCallback(verify_samples=verify_samples, float64_samples=float64_samples)


def test_source_is_best_or_last() -> None:
    with pytest.raises(UserError, match="must be 'best' or 'last'"):
        ReparameterizeCallback(source="newest")
    assert ReparameterizeCallback(source="last").float64_samples == 16
