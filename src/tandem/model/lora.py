"""LoRA adapters on any preset (`model.lora`), built on PEFT.

PEFT's LoRA layers are injected into the Hugging Face model in place (`apply_lora`): the model
object every other part of tandem holds stays the same `*ForCausalLM`, its targeted linears
become `peft.tuners.lora.Linear` (the frozen base linear plus trainable A and B), and only the
adapter's parameters train. The `PeftModel` wrapper is kept beside the model (`peft_of`) for
saving, loading and merging; it is never what the trainer calls.

The reference model of a LoRA run is not a second copy of the model (`LoraReference`):

- the initial model (KL to the start, DPO's reference) is the base with the adapter disabled,
  which is the initial policy exactly, as LoRA starts with B = 0;
- where the reference must move (`stages.<name>.reference: stage_start`: ReFT's RL stage,
  SPIN's previous iterate) it is a second adapter named ``reference``, frozen, into which the
  policy's adapter is copied at the switch. It is created with the model, so the parameter
  list never changes during a run.

Sampling uses the adapted weights: tandem's decoder (`tandem.model.decoder`) reads a LoRA
linear's weight through `effective_weight` (base + B·A·scale of the active adapter, nothing when
the adapter is off), and its packed-weight cache is keyed by `adapter_state` too. A test checks
that the sampler's outputs move after an update (`tests/test_lora.py`), the failure peers'
users report for LoRA runs whose rollouts kept the initial weights.

Not supported: adapters on ``lm_head`` or ``embed_tokens`` (the fused LM head and the tied
embedding gradient read those weights directly; asking for them is a config error).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tandem.errors import ConfigError

ADAPTER = "default"
"""The trained adapter (PEFT's default name, so `PeftModel.from_pretrained` finds it)."""
REFERENCE = "reference"
"""The frozen second adapter of a moving reference."""
UNSUPPORTED = ("lm_head", "embed_tokens")

_PEFT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def apply_lora(
    model: nn.Module,
    *,
    r: int,
    alpha: float,
    dropout: float,
    target_modules: list[str] | str,
    reference_adapter: bool = False,
) -> nn.Module:
    """Inject LoRA layers into `model` (in place) and freeze everything but the adapter.

    `target_modules` is a list of module-name suffixes (``q_proj``) or ``all-linear`` (every
    linear but the LM head). `reference_adapter` also adds the frozen ``reference`` adapter of a
    moving reference. Returns `model` itself. Raises ConfigError naming `model.lora.*`.
    """
    from peft import LoraConfig, get_peft_model

    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    bad = [t for t in ([targets] if isinstance(targets, str) else targets) if t in UNSUPPORTED]
    if bad:
        raise ConfigError(
            f"config error: model.lora.target_modules: {bad[0]!r} is not supported (the fused "
            "LM head and the tied embedding gradient read that weight directly); use "
            "all-linear or names of the attention and MLP linears"
        )
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets)
    try:
        pm = get_peft_model(model, cfg, adapter_name=ADAPTER)
    except ValueError as e:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if _linear(m)})
        raise ConfigError(
            f"config error: model.lora.target_modules: {targets!r}: {' '.join(str(e).split())[:200]}"
            f" (this model's linears: {', '.join(names)}, or all-linear)"
        ) from None
    if pm.base_model.model is not model:  # PEFT wraps in place for every model it knows
        raise ConfigError("config error: model.lora: PEFT did not inject the adapter in place")
    if reference_adapter:
        pm.add_adapter(REFERENCE, cfg)
        pm.base_model.set_adapter(ADAPTER)  # the trained adapter active, the reference frozen
    _PEFT[model] = pm
    for p in _adapter_params(model, REFERENCE):
        p.requires_grad_(False)
    return model


def _linear(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear)


def is_lora(model: nn.Module) -> bool:
    """True if `model` carries LoRA adapters injected by `apply_lora`."""
    return model in _PEFT


def peft_of(model: nn.Module):
    """The `PeftModel` around `model` (for saving and merging)."""
    return _PEFT[model]


def _lora_layers(model: nn.Module) -> list[nn.Module]:
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def _adapter_params(model: nn.Module, name: str) -> list[nn.Parameter]:
    out = []
    for layer in _lora_layers(model):
        for attr in ("lora_A", "lora_B"):
            mods = getattr(layer, attr)
            if name in mods:
                out += list(mods[name].parameters())
    return out


def effective_weight(m: nn.Module) -> Tensor:
    """The weight a linear applies: for a LoRA linear in eval mode, the base weight plus the
    active adapters' B·A·scale (the base alone while adapters are disabled or merged); for any
    other linear its `weight`."""
    base = getattr(m, "base_layer", None)
    if base is None or not hasattr(m, "get_delta_weight"):
        return m.weight
    w = base.weight
    if m.disable_adapters or m.merged:
        return w
    for name in m.active_adapters:
        if name in m.lora_A:
            w = w + m.get_delta_weight(name).to(w.dtype)
    return w


def effective_bias(m: nn.Module) -> Tensor | None:
    """The bias of a linear (a LoRA linear's is its base layer's)."""
    base = getattr(m, "base_layer", None)
    return getattr(base if base is not None else m, "bias", None)


def merged_parameters(model: nn.Module) -> list[tuple[str, Tensor]]:
    """The model's parameters under the base architecture's names, each LoRA linear's weight
    with its active adapter merged (`effective_weight`), the adapters' own A and B left out:
    what a rollout engine that holds a plain copy of the model loads after an update (vLLM)."""
    layers = {n: m for n, m in model.named_modules() if hasattr(m, "get_delta_weight")}
    out = []
    for name, p in model.named_parameters():
        if ".lora_" in name:
            continue
        owner, sep, leaf = name.partition(".base_layer.")
        if sep and owner in layers:
            value = effective_weight(layers[owner]) if leaf == "weight" else p
            out.append((f"{owner}.{leaf}", value.detach()))
        else:
            out.append((name, p.detach()))
    return out


def adapter_state(model: nn.Module) -> tuple:
    """What decides which adapter weights apply (empty for a model without LoRA)."""
    if model not in _PEFT:
        return ()
    layer = _lora_layers(model)[0]
    return (layer.disable_adapters, tuple(layer.active_adapters))


@contextlib.contextmanager
def adapter_off(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block `model` runs as its base model (every adapter disabled)."""
    layers = _lora_layers(model)
    before = [layer.disable_adapters for layer in layers]
    for layer in layers:
        layer._disable_adapters = True
    try:
        yield model
    finally:
        for layer, was in zip(layers, before, strict=True):
            layer._disable_adapters = was


@contextlib.contextmanager
def use_adapter(model: nn.Module, name: str) -> Iterator[nn.Module]:
    """Within the block `model` runs with adapter `name` instead of the trained one; on exit the
    trained adapter is active again and trainable, the other frozen."""
    pm = _PEFT[model]
    pm.base_model.set_adapter(name, inference_mode=True)
    try:
        yield model
    finally:
        pm.base_model.set_adapter(ADAPTER)
        for p in _adapter_params(model, REFERENCE):
            p.requires_grad_(False)


class LoraReference:
    """The reference model of a LoRA run: the policy's own module, with its adapter disabled
    (the initial model) or with the frozen ``reference`` adapter once a stage has set it."""

    def __init__(self, policy: nn.Module) -> None:
        self.policy = policy
        self.moved = False

    @contextlib.contextmanager
    def use(self) -> Iterator[nn.Module]:
        """The module to run as the reference within the block."""
        ctx = use_adapter(self.policy, REFERENCE) if self.moved else adapter_off(self.policy)
        with ctx as m:
            yield m

    def set_from_policy(self) -> None:
        """The policy as it is now becomes the reference (its adapter copied)."""
        src, dst = _adapter_params(self.policy, ADAPTER), _adapter_params(self.policy, REFERENCE)
        if not dst:
            raise RuntimeError("the model was built without the reference adapter")
        with torch.no_grad():
            for d, s in zip(dst, src, strict=True):
                d.copy_(s)
        self.moved = True


@contextlib.contextmanager
def reference_module(ref: Any) -> Iterator[nn.Module]:
    """The module to run as the reference: a plain model as it is, a `LoraReference` switched."""
    if isinstance(ref, LoraReference):
        with ref.use() as m:
            yield m
    else:
        yield ref


def set_reference(ref: Any, policy: nn.Module) -> None:
    """Make the policy's current weights the reference."""
    if isinstance(ref, LoraReference):
        ref.set_from_policy()
    else:
        ref.load_state_dict(policy.state_dict())


def save_adapters(model: nn.Module, out_dir: Path, *, reference: bool) -> None:
    """Write the trained adapter as a standard PEFT adapter directory (adapter_config.json,
    adapter_model.safetensors: `PeftModel.from_pretrained(base, out_dir)` loads it), and the
    reference adapter in its subfolder ``reference/`` when `reference`."""
    pm = _PEFT[model]
    pm.save_pretrained(str(out_dir), selected_adapters=[ADAPTER], safe_serialization=True)
    if reference:
        pm.save_pretrained(str(out_dir), selected_adapters=[REFERENCE], safe_serialization=True)


def load_adapters(model: nn.Module, src_dir: Path) -> bool:
    """Load the adapter weights saved by `save_adapters` into `model`'s adapters; returns True
    if a reference adapter was loaded too."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    pm = _PEFT[model]
    src_dir = Path(src_dir)
    found = {ADAPTER: src_dir / "adapter_model.safetensors"}
    if (src_dir / REFERENCE / "adapter_model.safetensors").is_file():
        found[REFERENCE] = src_dir / REFERENCE / "adapter_model.safetensors"
    for name, path in found.items():
        res = set_peft_model_state_dict(pm, load_file(path), adapter_name=name)
        missing = [k for k in res.missing_keys if "lora_" in k and f".{name}." in k]
        if res.unexpected_keys or missing:
            raise ConfigError(
                f"model.lora: the adapter in {path.parent} does not fit this model "
                f"(unexpected {res.unexpected_keys[:3]}, missing {missing[:3]}); "
                "were model.lora's settings changed?"
            )
    pm.base_model.set_adapter(ADAPTER)
    for p in _adapter_params(model, REFERENCE):
        p.requires_grad_(False)
    return REFERENCE in found


def merged(model: nn.Module) -> nn.Module:
    """A plain Hugging Face model with the trained adapter merged into the base weights (the
    model given is consumed: PEFT merges in place)."""
    pm = _PEFT.pop(model)
    if REFERENCE in pm.peft_config:
        pm.delete_adapter(REFERENCE)
    return pm.merge_and_unload()


__all__ = [
    "ADAPTER",
    "REFERENCE",
    "LoraReference",
    "adapter_off",
    "adapter_state",
    "apply_lora",
    "effective_bias",
    "effective_weight",
    "is_lora",
    "load_adapters",
    "merged",
    "merged_parameters",
    "peft_of",
    "reference_module",
    "save_adapters",
    "set_reference",
    "use_adapter",
]
