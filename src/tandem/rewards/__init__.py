"""Verifiers and safe scoring."""

from tandem.rewards.safe import safe_score, score_batch
from tandem.rewards.verifiers import VERIFIERS, exact_match, last_number, math_equal

__all__ = ["VERIFIERS", "exact_match", "last_number", "math_equal", "safe_score", "score_batch"]
