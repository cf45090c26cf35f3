"""Models: loading (tiny / SmolLM2 / local HF dirs), selective token log-probs, batched sampling."""

from tandem.model.load import eos_token_ids, load_model
from tandem.model.logprobs import token_logprobs
from tandem.model.sampler import SampleOutput, keep_packed, sample
from tandem.model.tiny import build_tiny

__all__ = [
    "SampleOutput",
    "build_tiny",
    "eos_token_ids",
    "keep_packed",
    "load_model",
    "sample",
    "token_logprobs",
]
