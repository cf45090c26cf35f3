"""A tiny random-init Llama with a character-level tokenizer, for tests and quick experiments."""

from __future__ import annotations

import string

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
CHARS = string.digits + string.ascii_letters + string.punctuation + " \n"


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer: one token per character, ids 0..2 are <pad>, <eos>, <unk>.

    No BOS is added and decoding concatenates characters, so decode(encode(s)) == s for any s
    made of digits, ASCII letters, punctuation, space and newline.
    """
    vocab = {tok: i for i, tok in enumerate([PAD, EOS, UNK, *CHARS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Every single character (newline included) becomes its own pre-token.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
        model_max_length=512,
    )


def build_tiny(seed: int = 0) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """Random-init 2-layer Llama (hidden 64, vocab = the 99 characters + specials).

    Deterministic under `seed`; the global torch RNG state is left untouched.
    """
    tokenizer = build_tiny_tokenizer()
    shape = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    return _llama(shape, tokenizer, seed), tokenizer


def _llama(shape: dict, tokenizer: PreTrainedTokenizerFast, seed: int) -> LlamaForCausalLM:
    """A random-init Llama of `shape` whose special ids are the tokenizer's, in eval mode,
    deterministic under `seed` (the global torch RNG state is left untouched)."""
    config = LlamaConfig(
        **shape,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    model.eval()
    return model


# SmolLM2-135M-Instruct's architecture (its config.json), for a random-init model of the same
# shape: the GPU check runs it where the real weights cannot be carried.
SMOLLM2_135M_SHAPE = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    max_position_embeddings=8192,
    rope_theta=100000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
)
RANDOM_SHAPES = {"smollm2-135m": SMOLLM2_135M_SHAPE}


def build_random(shape: str, seed: int = 0) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A random-init Llama of a known model's shape (`RANDOM_SHAPES`) with the character-level
    tokenizer (its ids fill the low end of the vocabulary). Deterministic under `seed`."""
    if shape not in RANDOM_SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(RANDOM_SHAPES)}")
    tokenizer = build_tiny_tokenizer()
    return _llama(RANDOM_SHAPES[shape], tokenizer, seed), tokenizer
