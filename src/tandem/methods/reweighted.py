"""Reweighted SFT presets: DFT, Anchored SFT, ASFT and PoFT. Each trains on demonstrations (or,
for ASFT, on preference pairs) with a loss that reweights the NLL's tokens or sequences."""

from __future__ import annotations

from tandem.methods import preset

DEMOS = {"demos": {"kind": "demos"}}


@preset(
    "dft", "DFT: −sg(p)·log p on demonstrations (the SFT gradient times p)", "DFT arXiv 2508.05629"
)
def dft() -> dict:
    """DFT, Dynamic Fine-Tuning (arXiv 2508.05629), checked against TRL `sft_trainer.py::dft_loss`
    and Trinity-RFT `sft_is`: ℓ_t = −sg(p_t)·log p_t, token mean over the batch's demonstration
    tokens. Its gradient is −∇p_t: the NLL's 1/p_t is cancelled, so tokens the model finds
    unlikely no longer dominate. The DFT repository's "SA-DFT" token-class exponents are not
    part of the paper and not implemented.
    """
    return {
        "objective": {"sources": DEMOS, "terms": {"dft": {"kind": "dft", "sources": ["demos"]}}},
        "run_defaults": {"demos_per_step": 16},
    }


@preset(
    "anchored_sft",
    "Anchored SFT: DFT + λ·KL(π_ref ‖ π_θ) over the full vocabulary, frozen initial model",
    "Anchored SFT arXiv 2509.23753; zhuchichi56/ASFT",
)
def anchored_sft() -> dict:
    """Anchored SFT (arXiv 2509.23753), checked against zhuchichi56/ASFT `train_v2.py::
    compute_loss` mode "asft" (6f6f51c): ℓ_t = −sg(p_t)·log p_t + λ·Σ_v π_ref(v|s_t)(log
    π_ref(v|s_t) − log π_θ(v|s_t)), token mean; the KL is over the whole vocabulary in the
    direction KL(π_ref ‖ π_θ) (the code's `F.kl_div(log_softmax(θ), softmax(ref))`), the reference
    the frozen initial model; λ = 0.1 (`kl_weight`). Ports that use a gold-token k3 estimate or
    λ 0.03–0.05 are not the reference. The vocabulary KL holds (tokens × vocabulary) log-probs of
    both models while it runs: size `tokens_per_microbatch` to the vocabulary.
    """
    return {
        "objective": {
            "sources": DEMOS,
            "terms": {
                "dft": {"kind": "dft", "sources": ["demos"]},
                "anchor": {"kind": "vocab_kl", "sources": ["demos"], "coef": 0.1},
            },
        },
        "run_defaults": {"demos_per_step": 16},
    }


@preset(
    "asft",
    "ASFT: NLL on the chosen + λ·pointwise log-odds terms on both sides, no reference",
    "ASFT arXiv 2409.10571; turbo-alignment ASFTLoss",
)
def asft() -> dict:
    """ASFT, Aligned SFT through absolute likelihood (arXiv 2409.10571). The original authors'
    code was not found; checked against turbo-llm/turbo-alignment `ASFTLoss` (72e737d), by the
    authors of "DAAs are a blur" (arXiv 2502.01237): L = −c_ce·avg-logp(y_w) + λ·[−log σ(β·lo(y_w))
    − log σ(−β·lo(y_l))], lo = log-odds of the length-averaged likelihood, β = λ = c_ce = 1
    (turbo-alignment's defaults). Two terms: `sft` (NLL on the chosen rows, seq-mean-token-mean:
    the average log-prob per response) and `asft` (coefficient λ). No reference model. With
    β = 1 the chosen side's −log σ(lo) equals −avg-logp, duplicating the NLL (a property of the
    loss, noted in ALGORITHMS.md). The paper's own hyperparameters are unverified.
    """
    pairs = {"pairs": {"kind": "pairs", "mode": "data"}}
    return {
        "objective": {
            "sources": pairs,
            "terms": {
                "sft": {
                    "kind": "nll",
                    "sources": ["pairs"],
                    "rows": "chosen",
                    "agg": "seq-mean-token-mean",
                },
                "asft": {"kind": "asft", "sources": ["pairs"], "coef": 1.0, "beta": 1.0},
            },
        }
    }


@preset(
    "poft",
    "PoFT: Bradley–Terry preference of the model over a frozen scorer on each demonstration",
    "PoFT arXiv 2412.12865 (RECON: no public code)",
)
def poft() -> dict:
    """PoFT, preference-oriented SFT (arXiv 2412.12865, AAAI). No code was found; the RECON of
    ALGORITHMS.md §5: ℓ = −log σ(avg-logp_θ(y|x) − sg(avg-logp_A(y|x))) on each demonstration,
    one response at a time, averaged over the batch's demonstrations. Its gradient is the
    sequence NLL's times σ(score_A − score_θ), so the scorer's likelihood acts as a per-sample
    quality weight. Choices: the scorer A is the run's reference model (by default the frozen
    initial model; the paper uses one or more other aligned LLMs: load another model as the
    reference to follow it); token-averaged log-probs; no temperature. Exact normalisation
    unverified.
    """
    return {
        "objective": {"sources": DEMOS, "terms": {"poft": {"kind": "poft", "sources": ["demos"]}}},
        "run_defaults": {"demos_per_step": 16},
    }


@preset(
    "otr",
    "One-Token Rollout: each gold token a one-step episode, in expectation over the sampled token",
    "OTR arXiv 2509.26313 (RECON: abstract, no code)",
)
def otr() -> dict:
    """OTR, One-Token Rollout (arXiv 2509.26313). No code was found; ALGORITHMS.md's RECON of the
    abstract: at every demonstration position the policy "samples" a token a ~ softmax(log π/τ)
    (a one-step rollout); a = the gold token earns reward, a wrong token is penalised with
    weight β. tandem computes the exact expectation over a instead of K samples
    (`tandem.algo.terms.one_token_rollout`): ℓ_t = −[q(y)·log π(y) − β·Σ_{v≠y} q(v)·log π(v)],
    q = sg(softmax(log π/τ)), τ = 1, β = 0.1, token mean. The gold term is DFT-like (weight q(y));
    the penalty pushes probability off the tokens the model would sample instead. Holds
    (tokens × vocabulary) log-probs while it runs. K, τ and β of the paper are unverified.
    """
    return {
        "objective": {
            "sources": DEMOS,
            "terms": {
                "otr": {"kind": "otr", "sources": ["demos"], "temperature": 1.0, "beta": 0.1}
            },
        },
        "run_defaults": {"demos_per_step": 16},
    }


@preset(
    "c_rlft",
    "C-RLFT (OpenChat): class-conditioned prompts and class weights on mixed-quality SFT data",
    "OpenChat arXiv 2309.11235; imoneoi/openchat",
)
def c_rlft() -> dict:
    """C-RLFT, OpenChat (arXiv 2309.11235), checked against imoneoi/openchat (47a3596:
    `ochat/config/conversation_template.py`, `lm_head_with_loss`): SFT data of two quality
    classes, each class's prompts tagged with its condition (OpenChat: "GPT4 Correct User:" vs
    "GPT3 User:"), the loss Σ_t w_class·CE_t on the response tokens (1.0 for the expert class,
    0.1 for the other), token mean; at inference the condition is the best class's
    (`eval.condition`). Here the expert class is the task's gold solutions (`expert`) and the
    weaker class the initial model's own unverified samples (`weak`: `self_verified` with
    `min_reward: 0` sampled by the reference model), tags "Expert: " and "Weak: ". OpenChat's
    optional per-sequence weight w/(|text| + |eot|) is not implemented.
    """
    weak = {
        "kind": "self_verified",
        "model": "reference",
        "min_reward": 0.0,
        "condition": "Weak: ",
        "weight": 0.1,
    }
    return {
        "objective": {
            "sources": {
                "expert": {"kind": "demos", "condition": "Expert: ", "weight": 1.0},
                "weak": weak,
            },
            "terms": {"sft": {"kind": "nll", "sources": ["expert", "weak"]}},
        },
        "run_defaults": {
            "demos_per_step": 16,
            "samples_per_prompt": 2,
            "eval": {"condition": "Expert: "},
        },
    }


@preset(
    "fait",
    "FAIT: NLL with more weight on the gold tokens that differ from a wrong solution",
    "FAIT / FGIT arXiv 2503.16913 (RECON: abstract)",
)
def fait() -> dict:
    """FAIT, fault-aware (later fault-guided) fine-tuning (arXiv 2503.16913), at the abstract's
    level (ALGORITHMS.md's RECON): a correct solution and an incorrect but similar one; the
    tokens where they differ (a difflib token diff) are error-sensitive and weigh
    1 + α (α = 1), the weights scaled to mean 1 per solution: L = −(1/n)Σ_j w_j·log p(c_j).
    The wrong solution is one of the task's (`Example.wrong`), drawn per step. Deviations: the
    line-level mask M^line (for code) is not implemented, only the token-level one; the weights
    are fixed (the paper calls them dynamic; its schedule is unverified).
    """
    return {
        "objective": {
            "sources": {"demos": {"kind": "demos", "fault_weight": 1.0}},
            "terms": {"sft": {"kind": "nll", "sources": ["demos"]}},
        },
        "run_defaults": {"demos_per_step": 16},
    }


@preset(
    "ift",
    "IFT: NLL on inputs mixed with the model's own predictions, weighted by discounted future loss",
    "IFT arXiv 2405.11870; TsinghuaC3I/Intuitive-Fine-Tuning",
)
def ift() -> dict:
    """IFT, Intuitive Fine-Tuning (arXiv 2405.11870, ACL 2025), checked against
    TsinghuaC3I/Intuitive-Fine-Tuning (03adb93, `src/trainers.py`, `config/loss/ift.yaml`): a
    no-grad forward on the gold demonstration gives the greedy prediction ŷ_i for each response
    position; the training forward runs on temporal-residual inputs e'_i = (1 − λ)E(y*_i) +
    λE(ŷ_i) (λ 0.2, no schedule) and predicts the gold tokens; each token's NLL is weighted by
    the discounted sum of the losses after it (γ 0.95, L1-normalized to |y|, not detached, as
    in the code). One extra forward per step (the prediction pass, no grad). The shared-prompt
    packed forward steps aside for this term's rows (mixed embeddings are per row).
    """
    return {
        "objective": {
            "sources": DEMOS,
            "terms": {
                "ift": {
                    "kind": "ift",
                    "sources": ["demos"],
                    "mix": 0.2,
                    "gamma": 0.95,
                    "agg": "seq-mean-token-mean",
                }
            },
        },
        "run_defaults": {"demos_per_step": 16},
    }
