"""Verifiers, safe scoring, reward functions of your own, and the worker processes that run them
with limits (`RewardPool`)."""

from tandem.rewards.pool import RewardPool, active_pool, dropped
from tandem.rewards.safe import safe_score, score_batch
from tandem.rewards.verifiers import VERIFIERS, exact_match, last_number, math_equal

__all__ = [
    "VERIFIERS",
    "RewardPool",
    "active_pool",
    "dropped",
    "exact_match",
    "last_number",
    "math_equal",
    "safe_score",
    "score_batch",
]
