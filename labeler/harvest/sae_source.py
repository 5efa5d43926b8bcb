"""The SAE, its subject model and the hook between them: token ids in, SAE latents out.

* The SAE is a sae-lens SAE: a folder with `cfg.json` and `sae_weights.safetensors`
  (`SAE.load_from_disk`), or `RELEASE:SAE_ID` of sae-lens's pretrained directory where a network allows.
* The subject model is a plain Hugging Face model (causal LM or encoder), loaded with `AutoModel` from a
  folder or hub id, safetensors only, frozen.
* The hook is the SAE's `metadata.hook_name` (or an override), mapped to a module of the HF model:
  `blocks.{i}.hook_resid_post` is the output of transformer layer i (GPT-2 `h.i`, Llama/Gemma
  `layers.i`, BERT `encoder.layer.i`), `blocks.{i}.hook_resid_pre` its input; any other name must be a
  module path of the HF model (`transformer.h.3.mlp`), whose output is taken. The forward stops right
  after the hook (a private exception raised from it), so later layers never run.

An SAE trained on a TransformerLens model loaded with `center_writing_weights` (its metadata's
`model_from_pretrained_kwargs`, e.g. gpt2-small-res-jb) read a residual stream with its mean over d_model
removed at every token; at a resid hook the HF activations are centred the same way.

Every mismatch (unknown hook, layer out of range, width different from the SAE's `d_in`) is found by a
probe forward of two tokens before any work. This module knows nothing about corpora or exemplars.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE
from torch import Tensor, nn
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from labeler.discriminators.base import resolve_device

RESID = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|post)$")


class SourceError(ValueError):
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


def load_sae(spec: str, device: torch.device) -> SAE[Any]:
    """A sae-lens SAE from a local folder, or `RELEASE:SAE_ID` from sae-lens's pretrained directory."""
    folder = Path(spec)
    if folder.is_dir():
        return _load_sae_folder(folder, device)
    if ":" in spec and not folder.exists():
        release, sae_id = spec.split(":", 1)
        try:
            return SAE.from_pretrained(release, sae_id, device=str(device))
        except Exception as err:
            raise SourceError(f"cannot load SAE {sae_id!r} of release {release!r}: {err}") from err
    raise SourceError(
        f"SAE {spec!r} is neither a folder (with cfg.json and sae_weights.safetensors) nor RELEASE:SAE_ID"
    )


def _load_sae_folder(folder: Path, device: torch.device) -> SAE[Any]:
    cfg_path, weights = folder / "cfg.json", folder / "sae_weights.safetensors"
    if not cfg_path.is_file():
        raise SourceError(f"SAE folder {folder} has no cfg.json (a sae-lens SAE folder holds cfg.json and weights)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SourceError(f"SAE config {cfg_path} is not valid JSON: {err}") from err
    missing = [key for key in ("d_in", "d_sae") if not isinstance(cfg, dict) or key not in cfg]
    if missing:
        raise SourceError(f"SAE config {cfg_path} lacks {missing}; is it a sae-lens cfg.json?")
    if not weights.is_file():
        found = sorted(p.name for p in folder.iterdir())
        raise SourceError(f"SAE folder {folder} has no sae_weights.safetensors (found {found}); only safetensors load")
    try:
        sae = SAE.load_from_disk(folder, device=str(device))
    except Exception as err:
        raise SourceError(f"cannot load the SAE from {folder} (cfg.json or sae_weights.safetensors): {err}") from err
    return sae.eval().requires_grad_(False)


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
    """Map a sae-lens hook name (or an HF module path) to a module of `model`."""
    modules = dict(model.named_modules())
    match = RESID.match(hook_name)
    if match is None:
        if hook_name in modules and hook_name:
            return HookPoint(hook_name, hook_name, "output")
        raise SourceError(
            f"hook {hook_name!r} is neither blocks.N.hook_resid_pre/post nor a module of {type(model).__name__} "
            "(give a module path such as the output of model.named_modules(), with --hook)"
        )
    layer, where = int(match.group(1)), match.group(2)
    path, count = _layer_list(model)
    if layer >= count:
        raise SourceError(f"hook {hook_name!r} needs layer {layer}, but {type(model).__name__} has {count} layers")
    return HookPoint(hook_name, f"{path}.{layer}", "input" if where == "pre" else "output")


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

    sae: SAE[Any]
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
        return int(self.sae.cfg.d_sae)

    @torch.inference_mode()
    def latents(self, ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Float[window token feature]: the SAE's latents (not its reconstruction) at every token."""
        x = self._activations(ids, attention_mask)
        if self._center:  # what TransformerLens's residual stream is with center_writing_weights
            x = x - x.mean(-1, keepdim=True)
        return self.sae.encode(x.to(self.sae.W_enc.dtype))

    def _check(self) -> None:
        probe = torch.zeros((1, 2), dtype=torch.long, device=self.device)
        with torch.inference_mode():
            x = self._activations(probe, torch.ones_like(probe))
        if x.shape[-1] != self.sae.cfg.d_in:
            raise SourceError(
                f"the SAE expects d_in={self.sae.cfg.d_in} at hook {self.hook.name}, but the model's "
                f"{self.hook.module} ({self.hook.side}) has width {x.shape[-1]}: the SAE was not trained on this "
                "model or hook"
            )


def _centers_residual(sae: SAE[Any], hook: HookPoint) -> bool:
    """Whether the SAE read a mean-centred residual stream: trained on a TransformerLens model loaded with
    center_writing_weights (sae-lens's metadata.model_from_pretrained_kwargs, e.g. gpt2-small-res-jb), whose
    residual stream is the HF one minus its mean over d_model at every token."""
    kwargs = getattr(sae.cfg.metadata, "model_from_pretrained_kwargs", None) or {}
    if not kwargs.get("center_writing_weights"):
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
    sae: str, model: str, device: str = "auto", dtype: str = "float32", hook: str | None = None
) -> FeatureSource:
    """Load the SAE and the model, map the hook and check that they fit, before any work."""
    torch_device = resolve_device(device)
    sae_model = load_sae(sae, torch_device)
    hook_name = hook or sae_model.cfg.metadata.hook_name
    if not hook_name:
        raise SourceError(f"SAE {sae} names no hook (cfg.json metadata.hook_name); give one with --hook")
    subject, tokenizer = load_subject_model(model, torch_device, getattr(torch, dtype))
    return FeatureSource(sae_model, subject, tokenizer, resolve_hook(subject, hook_name), torch_device)
