"""Hand-computed checks of the per-token terms in tandem.algo.terms and of the term registry's
adapters (tandem.algo.objective), float64, tol 1e-6."""

import math

import pytest
import torch

from tandem.algo.objective import TERMS, TokenInputs, params_of
from tandem.algo.terms import (
    chord_phi_nll,
    clipped_pg,
    dft_nll,
    kl_penalty,
    nll,
    shaped_pg,
    unclipped_pg,
)
from tandem.errors import ConfigError
from tandem.experience import ROLE_ID

TOL = 1e-6
F64 = torch.float64


def t(values):
    return torch.tensor([values], dtype=F64)  # shape (1, T)


# Six tokens, d = logp − old_logp and A chosen to hit every branch of the clip:
#   d      A    ρ = e^d      −Aρ        −A·clip(ρ, .8, 1.2)   max        dual (A<0, c=3)
#   0.3   +1    1.349859    −1.349859   −1.2                  −1.2       –
#  −0.3   +1    0.740818    −0.740818   −0.8                  −0.740818  –
#   0.3   −1    1.349859    +1.349859   +1.2                  +1.349859  min(1.349859, 3)
#  −0.5   −1    0.606531    +0.606531   +0.8                  +0.8       min(0.8, 3)
#   0.0   +2    1           −2          −2                    −2         –
#   2.0   −1    7.389056    +7.389056   +1.2                  +7.389056  min(7.389056, 3) = 3
D = [0.3, -0.3, 0.3, -0.5, 0.0, 2.0]
A = [1.0, 1.0, -1.0, -1.0, 2.0, -1.0]


def _pg_inputs():
    old = t([-1.0] * 6)
    logp = (old + t(D)).requires_grad_(True)
    return logp, old, t(A)


def test_clipped_pg_values_and_dual_clip():
    logp, old, adv = _pg_inputs()
    loss = clipped_pg(logp, old, adv, clip_low=0.2, clip_high=0.2, clip_ratio_c=3.0)
    expected = t([-1.2, -0.740818, 1.349859, 0.8, -2.0, 3.0])
    torch.testing.assert_close(loss, expected, atol=TOL, rtol=0)
    # Without dual clip the last token keeps −Aρ = e^2 = 7.389056.
    no_dual = clipped_pg(logp, old, adv, clip_low=0.2, clip_high=0.2, clip_ratio_c=None)
    assert abs(no_dual[0, 5].item() - 7.389056) < TOL


def test_clipped_pg_gradient_only_where_unclipped():
    logp, old, adv = _pg_inputs()
    clipped_pg(logp, old, adv).sum().backward()
    # dℓ/dlogp = −A·ρ where the unclipped branch is active, 0 where a clip (or the dual clip) is:
    # token 1: clipped → 0; token 2: −0.740818; token 3: −(−1)·1.349859 = 1.349859;
    # token 4: clipped → 0; token 5: −2·1 = −2; token 6: dual-clipped constant → 0.
    expected = t([0.0, -0.740818, 1.349859, 0.0, -2.0, 0.0])
    torch.testing.assert_close(logp.grad, expected, atol=TOL, rtol=0)


def test_clipped_pg_clip_higher():
    # DAPO clip-higher: ε_hi = 0.28, d = 0.3, A = +1: ρ = 1.349859 > 1.28 → ℓ = −1.28.
    # d = −0.3, A = +1 with ε_lo = 0.2: ρ = 0.740818 < 0.8 → max(−0.740818, −0.8) = −0.740818.
    loss = clipped_pg(t([0.3, -0.3]), t([0.0, 0.0]), t([1.0, 1.0]), 0.2, 0.28, 3.0)
    torch.testing.assert_close(loss, t([-1.28, -0.740818]), atol=TOL, rtol=0)


def test_clipped_pg_log_ratio_clamp():
    # d = 50 is clamped to 20: ρ = e^20; with A = +1 the clip gives −1.2 (finite, no overflow).
    loss = clipped_pg(t([50.0]), t([0.0]), t([1.0]))
    assert abs(loss.item() - (-1.2)) < TOL
    with pytest.raises(ConfigError):
        clipped_pg(t([0.0]), t([0.0]), t([-1.0]), clip_ratio_c=0.5)


def test_unclipped_pg():
    # ℓ = −Aρ: d=0.3, A=+1 → −1.349859; d=2, A=−1 → +7.389056. dℓ/dlogp = ℓ (since dρ/dlogp = ρ).
    logp = t([0.3, 2.0]).requires_grad_(True)
    loss = unclipped_pg(logp, t([0.0, 0.0]), t([1.0, -1.0]))
    torch.testing.assert_close(loss, t([-1.349859, 7.389056]), atol=TOL, rtol=0)
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, t([-1.349859, 7.389056]), atol=TOL, rtol=0)


def _term(kind, **settings):
    spec = TERMS.spec(kind)(sources=["rollouts"], **settings)
    return lambda x: TERMS.get(kind).fn(x, **params_of(spec))


def test_pg_term_adapter_and_clip_fraction():
    logp, old, adv = _pg_inputs()
    sampled = torch.full_like(adv, ROLE_ID["sampled"], dtype=torch.int8)
    x = TokenInputs(logp=logp, old_logp=old, adv=adv, role=sampled)
    loss, stats = _term("pg")(x)
    torch.testing.assert_close(loss, clipped_pg(logp, old, adv))
    # From the table above: the clip is active (−A·clip(ρ) > −Aρ: no gradient) on tokens 1
    # (ρ = 1.35 > 1.2, A > 0) and 4 (ρ = 0.61 < 0.8, A < 0): 2 of 6.
    assert stats["clip_frac"].tolist() == [[1.0, 0.0, 0.0, 1.0, 0.0, 0.0]]
    loss, stats = _term("pg", clip=False)(x)
    torch.testing.assert_close(loss, unclipped_pg(logp, old, adv))
    assert stats["clip_frac"].sum() == 0
    # LUFFY: demonstration tokens take the shaped term −A·p/(p + γ), sampled ones the PG term.
    roles = sampled.clone()
    roles[0, :3] = ROLE_ID["demo"]
    x = TokenInputs(logp=logp, old_logp=old, adv=adv, role=roles)
    loss, _ = _term("pg", clip=False, off_policy="shaped", shaping_gamma=0.1)(x)
    torch.testing.assert_close(loss[0, :3], shaped_pg(logp, adv, 0.1)[0, :3])
    torch.testing.assert_close(loss[0, 3:], unclipped_pg(logp, old, adv)[0, 3:])


def test_pg_prefix_entropy_keep():
    # Prefix-RFT: of a row's prefix tokens only the highest-entropy fraction keeps its
    # advantage. Prefix tokens 0-3 with entropies [0.1, 0.9, 0.5, 0.7], keep 0.5 → ceil(2) = 2
    # tokens: entropies 0.9 and 0.7 (tokens 1 and 3); tokens 4-5 are sampled and untouched.
    logp = t([-1.0] * 6).requires_grad_(True)
    roles = torch.tensor([[ROLE_ID["prefix"]] * 4 + [ROLE_ID["sampled"]] * 2], dtype=torch.int8)
    x = TokenInputs(
        logp=logp,
        old_logp=logp.detach(),
        adv=t([1.0] * 6),
        role=roles,
        entropy=t([0.1, 0.9, 0.5, 0.7, 0.0, 0.0]),
    )
    loss, _ = _term("pg", prefix_entropy_keep=0.5)(x)
    # ratio 1: ℓ = −A where the advantage is kept, 0 where it was zeroed
    assert loss.tolist() == [[0.0, -1.0, 0.0, -1.0, -1.0, -1.0]]
    assert TERMS.spec("pg")(sources=["r"], prefix_entropy_keep=0.2).extra_needs() == {"entropy"}


def test_term_registry_lists_every_kind_and_rejects_unknown():
    assert {"pg", "nll", "dft", "chord_phi", "kl", "entropy", "value"} <= set(TERMS.names())
    assert {"dpo", "ipo", "simpo", "orpo"} <= set(TERMS.names())
    with pytest.raises(ConfigError, match="pg, nll"):
        TERMS.get("gspo")


def test_shaped_pg_value_and_gradient():
    # p = 0.5, γ = 0.1, A = 2: f = 0.5/0.6 = 0.833333, ℓ = −2·0.833333 = −1.666667.
    # dℓ/dp = −A·γ/(p+γ)² = −2·0.1/0.36 = −0.555556.
    p = torch.tensor([[0.5]], dtype=F64, requires_grad=True)
    loss = shaped_pg(torch.log(p), t([2.0]), gamma=0.1)
    assert abs(loss.item() - (-1.666667)) < TOL
    loss.sum().backward()
    assert abs(p.grad.item() - (-0.555556)) < TOL
    # Low-probability tokens get a larger push: p = 0.01 → dℓ/dp = −2·0.1/0.0121 = −16.528926.
    p2 = torch.tensor([[0.01]], dtype=F64, requires_grad=True)
    shaped_pg(torch.log(p2), t([2.0]), gamma=0.1).sum().backward()
    assert abs(p2.grad.item() - (-16.528926)) < TOL


def test_expert_terms_values_and_gradients():
    # p = [0.5, 0.25]; log 2 = 0.693147, log 4 = 1.386294.
    # nll       = −logp             = [0.693147, 1.386294]
    # dft       = −sg(p)·logp       = [0.5·0.693147, 0.25·1.386294] = [0.346574, 0.346574]
    # chord_phi = −sg(p(1−p))·logp  = [0.25·0.693147, 0.1875·1.386294] = [0.173287, 0.259930]
    expected = {
        nll: t([0.693147, 1.386294]),
        dft_nll: t([0.346574, 0.346574]),
        chord_phi_nll: t([0.173287, 0.259930]),
    }
    # Gradients w.r.t. p (through logp = log p):
    # nll: −1/p = [−2, −4]; dft: −sg(p)/p = [−1, −1] (= −∇p); chord_phi: −(1−p) = [−0.5, −0.75].
    expected_grad = {
        nll: t([-2.0, -4.0]),
        dft_nll: t([-1.0, -1.0]),
        chord_phi_nll: t([-0.5, -0.75]),
    }
    for fn, value in expected.items():
        p = t([0.5, 0.25]).requires_grad_(True)
        loss = fn(torch.log(p))
        torch.testing.assert_close(loss, value, atol=TOL, rtol=0)
        loss.sum().backward()
        torch.testing.assert_close(p.grad, expected_grad[fn], atol=TOL, rtol=0)


def test_expert_term_adapters():
    logp = torch.log(t([0.5, 0.25]))
    x = TokenInputs(logp=logp, old_logp=logp, adv=logp * 0, role=logp.to(torch.int8) * 0)
    for kind, fn in (("nll", nll), ("dft", dft_nll), ("chord_phi", chord_phi_nll)):
        torch.testing.assert_close(_term(kind)(x), fn(logp))
    # entropy is a bonus: the term is −H
    x.entropy = t([0.3, 1.2])
    torch.testing.assert_close(_term("entropy")(x), t([-0.3, -1.2]))


def test_kl_estimators():
    # d = logp − ref = [0.5, −1.0, 30, −30]
    # k1 = d = [0.5, −1, 30, −30]
    # k2 = ½d² = [0.125, 0.5, 450, 450]
    # k3 = e^{−d} + d − 1: e^{−0.5} − 0.5 = 0.106531; e − 2 = 0.718282;
    #      d = 30 → clamp 20 → 19.0 → clamp 10; d = −30 → clamp −20 → e^20 − 21 → clamp 10.
    logp = t([0.5, -1.0, 30.0, -30.0]).requires_grad_(True)
    ref = torch.zeros_like(logp)
    torch.testing.assert_close(kl_penalty(logp, ref, "k1"), t([0.5, -1.0, 30.0, -30.0]))
    torch.testing.assert_close(kl_penalty(logp, ref, "k2"), t([0.125, 0.5, 450.0, 450.0]))
    k3 = kl_penalty(logp, ref, "k3")
    torch.testing.assert_close(k3, t([0.106531, 0.718282, 10.0, 10.0]), atol=TOL, rtol=0)
    # Straight-through "k3+": forward k3, gradient of k2 = d.
    k3p = kl_penalty(logp, ref, "k3+")
    torch.testing.assert_close(k3p, k3, atol=TOL, rtol=0)
    k3p.sum().backward()
    torch.testing.assert_close(logp.grad, t([0.5, -1.0, 30.0, -30.0]), atol=TOL, rtol=0)
    # Plain k3 gradient: 1 − e^{−d} at d = 0.5 → 1 − 0.606531 = 0.393469.
    logp2 = t([0.5]).requires_grad_(True)
    kl_penalty(logp2, t([0.0]), "k3").sum().backward()
    assert abs(logp2.grad.item() - 0.393469) < TOL
    with pytest.raises(ConfigError, match="k3"):
        kl_penalty(logp, ref, "low_var_kl")


def test_vocab_kl_value_and_gradient():
    # V = 2: π_ref = [0.5, 0.5], π_θ = softmax(z) = [0.25, 0.75].
    # KL(ref ‖ θ) = 0.5·ln(0.5/0.25) + 0.5·ln(0.5/0.75) = 0.5·0.693147 − 0.5·0.405465 = 0.143841.
    # d KL / d z = p_θ − p_ref = [−0.25, 0.25].
    from tandem.algo.terms import vocab_kl

    z = torch.tensor([[[0.0, math.log(3.0)]]], dtype=F64, requires_grad=True)
    ref = torch.log(torch.tensor([[[0.5, 0.5]]], dtype=F64))
    kl = vocab_kl(torch.log_softmax(z, -1), ref)
    assert abs(kl.item() - 0.143841) < TOL
    kl.sum().backward()
    torch.testing.assert_close(z.grad, torch.tensor([[[-0.25, 0.25]]], dtype=F64), atol=TOL, rtol=0)
