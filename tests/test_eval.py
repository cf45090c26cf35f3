"""Unbiased pass@k (Chen et al. 2021) against hand computations."""

import pytest

from tandem.eval.evaluate import pass_at_k


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (5, 2, 1, 0.4),  # 1 - C(3,1)/C(5,1) = 1 - 3/5 = c/n
        (8, 0, 4, 0.0),  # no correct sample
        (8, 5, 4, 1.0),  # n - c = 3 < k: every 4-subset holds a correct one
        (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
    ],
)
def test_pass_at_k(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_needs_enough_samples():
    with pytest.raises(ValueError, match="at least 4 samples"):
        pass_at_k(3, 1, 4)
