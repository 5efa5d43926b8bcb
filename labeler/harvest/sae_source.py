"""The SAE, its subject model and the hook between them: token ids in, SAE latents out.

* The SAE is a sae-lens SAE, a sparsify SparseCoder or a Gemma Scope params.npz, read by
  `labeler.harvest.sae_formats` (which also names the hook each file carries).
* The subject model is a plain Hugging Face model (causal LM or encoder), loaded with `AutoModel` from a
  folder or hub id, safetensors only, frozen.
* The hook is the SAE's (or an override), mapped to a module of the HF model:
  `blocks.{i}.hook_resid_post` is the output of transformer layer i (GPT-2 `h.i`, Llama/Gemma
  `layers.i`, BERT `encoder.layer.i`), `blocks.{i}.hook_resid_pre` its input; any other name must be a
  module path, of the base model (`h.3.mlp`) or of the causal LM around it (`transformer.h.3.mlp`,
  `model.layers.5.mlp`), whose output is taken; a wrong name's error lists the nearest valid ones. The
  forward stops right after the hook (a private exception raised from it), so later layers never run.

An SAE trained on a TransformerLens model loaded with `center_writing_weights` (its metadata's
`model_from_pretrained_kwargs`, e.g. gpt2-small-res-jb) read a residual stream with its mean over d_model
removed at every token; at a resid hook the HF activations are centred the same way.

Every mismatch (unknown hook, layer out of range, width different from the SAE's `d_in`) is found by a
probe forward of two tokens before any work. This module knows nothing about corpora or exemplars.
"""

from __future__ import annotations

import difflib
import re
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from labeler.discriminators.base import resolve_device
from labeler.errors import InputError
from labeler.harvest.sae_formats import Encoder, SAEFormatError, load_encoder

RESID = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|post)$")


class SourceError(InputError):
    """The SAE, the model or the hook cannot be used together; the message says what to fix."""


class _StopForward(Exception):
    """Raised from the hook once the activations are captured, so later layers do not run."""


@dataclass(frozen=True)
class HookPoint:
    """Where in the HF model the SAE reads."""

    name: str
    """The SAE's hook name (or the module path given)."""
    module: str
    """The HF module path whose input or output is read."""
    side: str
    """"input" (resid_pre) or "output"."""


def load_subject_model(
    spec: str, device: torch.device, dtype: torch.dtype
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A Hugging Face model (its base, without a head) and its tokenizer, frozen, in eval mode."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec)
        model = AutoModel.from_pretrained(spec, use_safetensors=True, dtype=dtype)
    except Exception as err:
        raise SourceError(f"cannot load the model and tokenizer from {spec!r} (safetensors only): {err}") from err
    return model.to(device).eval().requires_grad_(False), tokenizer


def resolve_hook(model: nn.Module, hook_name: str) -> HookPoint:
    """Map a hook name to a module of `model`: sae-lens's `blocks.N.hook_resid_pre/post`, or a module path of
    `model`, of its base model (`h.0` on GPT2LMHeadModel) or of the causal LM wrapping it (`transformer.h.0` on
    GPT2Model), whose output is read."""
    match = RESID.match(hook_name)
    if match is None:
        module = _module_path(model, hook_name)
        if module is not None:
            return HookPoint(hook_name, module, "output")
        nearest = difflib.get_close_matches(hook_name, _hook_names(model), n=5, cutoff=0.4)
        raise SourceError(
            f"hook {hook_name!r} is neither blocks.N.hook_resid_pre/post nor a module of {type(model).__name__}"
            + (f"; nearest valid names: {', '.join(nearest)}" if nearest else "")
            + " (give a module path such as the output of model.named_modules(), with --hook)"
        )
    layer, where = int(match.group(1)), match.group(2)
    path, count = _layer_list(model)
    if layer >= count:
        raise SourceError(f"hook {hook_name!r} needs layer {layer}, but {type(model).__name__} has {count} layers")
    return HookPoint(hook_name, f"{path}.{layer}", "input" if where == "pre" else "output")


def _module_path(model: nn.Module, name: str) -> str | None:
    """The path in `model` of module `name`, given as a path of `model`, of its base model or of the causal LM
    around it (whose path has the base model's prefix: `transformer.`, `model.`, `bert.`); None if there is none."""
    modules = dict(model.named_modules())
    prefix = str(getattr(model, "base_model_prefix", "") or "")
    base = getattr(model, "base_model", model)
    base_path = next((path for path, module in modules.items() if module is base), "")
    candidates = [name]
    if base_path:  # a causal LM: the base model's own paths lie under base_path
        candidates.append(f"{base_path}.{name}")
    elif prefix and name.startswith(f"{prefix}."):  # the base model: the causal LM's paths start with its prefix
        candidates.append(name.removeprefix(f"{prefix}."))
    return next((c for c in candidates if c and c in modules), None)


def _hook_names(model: nn.Module) -> list[str]:
    """Every hook name `resolve_hook` takes for `model` (its modules under each spelling, and the resid hooks)."""
    names = [path for path, _ in model.named_modules() if path]
    prefix = str(getattr(model, "base_model_prefix", "") or "")
    base = getattr(model, "base_model", model)
    if base is model and prefix:
        names += [f"{prefix}.{path}" for path in list(names)]
    else:
        names += [path for path, _ in base.named_modules() if path]
    try:
        _, count = _layer_list(model)
    except SourceError:
        count = 0
    names += [f"blocks.{i}.hook_resid_{side}" for i in range(count) for side in ("pre", "post")]
    return names


def _layer_list(model: nn.Module) -> tuple[str, int]:
    """The path and length of the model's stack of transformer layers."""
    config = getattr(model, "config", None)
    wanted = getattr(config, "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0 and (wanted is None or len(module) == wanted):
            return name, len(module)
    raise SourceError(f"cannot find the transformer layers of {type(model).__name__}; give an HF module path as hook")


class HookedActivations:
    """Runs the model up to the hook and returns what the SAE reads there."""

    def __init__(self, model: nn.Module, hook: HookPoint) -> None:
        self.model = model
        self.hook = hook
        self.module = model.get_submodule(hook.module)

    def __call__(self, ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Float[window token d]: the hook's activations."""
        captured: list[Tensor] = []

        def grab(value: Any) -> None:
            tensor = value[0] if isinstance(value, tuple) else value
            captured.append(tensor)
            raise _StopForward

        if self.hook.side == "input":
            handle = self.module.register_forward_pre_hook(
                lambda _m, args, kwargs: grab(args[0] if args else kwargs["hidden_states"]), with_kwargs=True
            )
        else:
            handle = self.module.register_forward_hook(lambda _m, _args, output: grab(output))
        try:
            self.model(input_ids=ids, attention_mask=attention_mask)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not captured:
            raise SourceError(f"the forward pass never reached hook {self.hook.name} ({self.hook.module})")
        return captured[0]


@dataclass
class FeatureSource:
    """Token ids in, SAE latents out: the model up to the hook, then the SAE's encoder."""

    sae: Encoder
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    hook: HookPoint
    device: torch.device

    def __post_init__(self) -> None:
        self._activations = HookedActivations(self.model, self.hook)
        self._center = _centers_residual(self.sae, self.hook)
        self._check()

    @property
    def d_sae(self) -> int:
        return self.sae.d_sae

    @torch.inference_mode()
    def latents(self, ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Float[window token feature]: the SAE's latents (not its reconstruction) at every token."""
        x = self._activations(ids, attention_mask)
        if self._center:  # what TransformerLens's residual stream is with center_writing_weights
            x = x - x.mean(-1, keepdim=True)
        return self.sae.encode(x.to(self.sae.dtype))

    def _check(self) -> None:
        probe = torch.zeros((1, 2), dtype=torch.long, device=self.device)
        with torch.inference_mode():
            x = self._activations(probe, torch.ones_like(probe))
        if x.shape[-1] != self.sae.d_in:
            raise SourceError(
                f"the SAE expects d_in={self.sae.d_in} at hook {self.hook.name}, but the model's "
                f"{self.hook.module} ({self.hook.side}) has width {x.shape[-1]}: the SAE was not trained on this "
                "model or hook"
            )


def _centers_residual(sae: Encoder, hook: HookPoint) -> bool:
    """Whether the SAE read a mean-centred residual stream: trained on a TransformerLens model loaded with
    center_writing_weights (sae-lens's metadata.model_from_pretrained_kwargs, e.g. gpt2-small-res-jb), whose
    residual stream is the HF one minus its mean over d_model at every token."""
    if not sae.centres_residual:
        return False
    if RESID.match(hook.name) is None:
        warnings.warn(
            f"SAE was trained on a TransformerLens model with center_writing_weights; labeler centres "
            f"blocks.N.hook_resid_pre/post only, and reads {hook.name} ({hook.module}) as the HF model gives it",
            stacklevel=3,
        )
        return False
    return True


def load_source(
    sae: str,
    model: str,
    device: str = "auto",
    dtype: str = "float32",
    hook: str | None = None,
    sae_format: str = "auto",
) -> FeatureSource:
    """Load the SAE (in `sae_format`, or the one its files show) and the model, map the hook and check that they
    fit, before any work."""
    torch_device = resolve_device(device)
    try:
        encoder = load_encoder(sae, torch_device, sae_format)
    except SAEFormatError as err:
        raise SourceError(str(err)) from err
    hook_name = hook or encoder.hook_name
    if not hook_name:
        raise SourceError(
            f"SAE {sae} ({encoder.format}) names no hook (sae-lens: cfg.json metadata.hook_name; sparsify: the "
            "folder's name; Gemma Scope: a gemma-scope-*-res*/layer_N/ path); give one with --hook"
        )
    subject, tokenizer = load_subject_model(model, torch_device, getattr(torch, dtype))
    return FeatureSource(encoder, subject, tokenizer, resolve_hook(subject, hook_name), torch_device)
