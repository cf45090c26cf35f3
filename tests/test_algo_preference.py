"""Hand-computed checks of the pair losses (tandem.algo.preference) and PPO's value loss
(tandem.algo.value), float64, tol 1e-6."""

import math

import torch

from tandem.algo.preference import dpo, ipo, orpo_odds, simpo
from tandem.algo.value import clipped_value_loss

TOL = 1e-6
F64 = torch.float64


def t(*v):
    return torch.tensor(v, dtype=F64)


def test_dpo_value_gradient_and_label_smoothing():
    # logp_w −1, logp_l −2, both references −1.5: Δ_w = 0.5, Δ_l = −0.5, z = 1, β = 0.1.
    # ℓ = −log σ(0.1) = log(1 + e^{−0.1}) = log(1.904837) = 0.644397; margin βz = 0.1.
    # dℓ/dlogp_w = −β(1 − σ(0.1)) = −0.1·(1 − 0.524979) = −0.047502; dℓ/dlogp_l = +0.047502.
    w = t(-1.0).requires_grad_(True)
    lo = t(-2.0).requires_grad_(True)
    loss, margin = dpo(w, lo, t(-1.5), t(-1.5), beta=0.1)
    assert abs(loss.item() - 0.644397) < TOL and abs(margin.item() - 0.1) < TOL
    loss.backward()
    assert abs(w.grad.item() + 0.047502) < TOL and abs(lo.grad.item() - 0.047502) < TOL
    # ε = 0.2: 0.8·0.644397 + 0.2·log(1 + e^{0.1}) = 0.515518 + 0.2·0.744397 = 0.664397
    smoothed, _ = dpo(t(-1.0), t(-2.0), t(-1.5), t(-1.5), beta=0.1, label_smoothing=0.2)
    assert abs(smoothed.item() - 0.664397) < TOL
    # policy == reference: z = 0, ℓ = log 2
    same, m0 = dpo(t(-3.0), t(-1.0), t(-3.0), t(-1.0))
    assert abs(same.item() - math.log(2)) < TOL and m0.item() == 0.0


def test_ipo_is_length_averaged():
    # Δ_w = 0.5 over 2 tokens → 0.25; Δ_l = −0.5 over 4 → −0.125; z = 0.375; 1/(2β) = 5:
    # ℓ = (0.375 − 5)² = 21.390625; dℓ/dlogp_w = 2(z − 5)·(1/2) = −4.625.
    w = t(-1.0).requires_grad_(True)
    loss, margin = ipo(w, t(-2.0), t(-1.5), t(-1.5), t(2.0), t(4.0), beta=0.1)
    assert abs(loss.item() - 21.390625) < TOL and abs(margin.item() - 0.375) < TOL
    loss.backward()
    assert abs(w.grad.item() + 4.625) < TOL


def test_simpo_average_logps_and_margin():
    # avg_w = −1/2 = −0.5, avg_l = −2/4 = −0.5; β = 2, γ = 0.5: z = 2·0 − 0.5 = −0.5;
    # ℓ = −log σ(−0.5) = log(1 + e^{0.5}) = log(2.648721) = 0.974077.
    loss, margin = simpo(t(-1.0), t(-2.0), t(2.0), t(4.0), beta=2.0, gamma=0.5)
    assert abs(loss.item() - 0.974077) < TOL and abs(margin.item() + 0.5) < TOL


def test_orpo_odds_ratio():
    # a_w = −1/2 = −0.5: log-odds = −0.5 − log(1 − e^{−0.5}) = −0.5 − log(0.393469)
    #   = −0.5 + 0.932752 = 0.432752;
    # a_l = −4/4 = −1: −1 − log(1 − e^{−1}) = −1 − log(0.632121) = −1 + 0.458675 = −0.541325;
    # z = 0.974077; ℓ = log(1 + e^{−0.974077}) = log(1 + 0.377541) = 0.320300.
    loss, margin = orpo_odds(t(-1.0), t(-4.0), t(2.0), t(4.0))
    assert abs(margin.item() - 0.974077) < TOL
    assert abs(loss.item() - 0.320300) < TOL
    # a probability-1 response stays finite (clamped average log-prob)
    edge, _ = orpo_odds(t(0.0), t(-1.0), t(1.0), t(1.0))
    assert math.isfinite(edge.item())


def test_clipped_value_loss():
    # V 0.5, V_old 0.2, R 1: unclipped (0.5 − 1)² = 0.25; clipped V = 0.2 + 0.2 = 0.4 →
    # (0.4 − 1)² = 0.36 → ½·max = 0.18, and no gradient (the clipped branch is constant in V).
    # V 0.1, V_old 0.2, R 0: both branches (0.1)² → 0.005, gradient V − R = 0.1.
    v = t(0.5, 0.1).requires_grad_(True)
    loss = clipped_value_loss(v, t(0.2, 0.2), t(1.0, 0.0), clip=0.2)
    torch.testing.assert_close(loss, t(0.18, 0.005), atol=TOL, rtol=0)
    loss.sum().backward()
    torch.testing.assert_close(v.grad, t(0.0, 0.1), atol=TOL, rtol=0)
    # without clipping: ½(V − R)² = [0.125, 0.005]
    torch.testing.assert_close(
        clipped_value_loss(t(0.5, 0.1), t(0.2, 0.2), t(1.0, 0.0), clip=None),
        t(0.125, 0.005),
        atol=TOL,
        rtol=0,
    )
