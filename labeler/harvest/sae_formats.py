"""SAE files as their training libraries write them, loaded into one small interface: `Encoder`.

* "sae-lens": a folder with `cfg.json` and `sae_weights.safetensors` (`SAE.load_from_disk`), or
  `RELEASE:SAE_ID` of sae-lens's pretrained directory where a network allows. Its hook is
  `metadata.hook_name`.
* "sparsify": EleutherAI sparsify's SparseCoder folder, `<hookpoint>/cfg.json` + `sae.safetensors`
  (`SparseCoder.save_to_disk`), top-k or group-max activation. Its hook is the folder's name, a module
  path of the model's base (`layers.5`, `layers.5.mlp`, `h.0`), whose output is read: no `layers.N` ->
  resid_post shortcut, so `layers.5.mlp` stays the MLP's output.
* "gemma-scope": Gemma Scope's `params.npz` (W_enc, b_enc, threshold, W_dec, b_dec), a JumpReLU SAE. The
  file names no hook: a path holding `layer_N` under a `*-res*` release folder means blocks.N.hook_resid_post;
  otherwise give `--hook`.

The latents are computed here, from the weights, as each library does (sparsify and sae-lens are not
runtime dependencies). `detect_format` tells the formats apart by their file names. This module knows
nothing of the subject model beyond the hook name each file carries, nor of corpora.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor

from labeler.errors import InputError

SAEFormat = Literal["auto", "sae-lens", "sparsify", "gemma-scope"]
FORMATS: tuple[str, ...] = ("auto", "sae-lens", "sparsify", "gemma-scope")


class SAEFormatError(InputError):
    """The SAE's files cannot be read as the format asked for (or as any known one); the message says what to fix."""


class Encoder(Protocol):
    """What the harvest needs of an SAE: its widths, the hook it was trained on, and its latents."""

    @property
    def format(self) -> str:
        """One of FORMATS but "auto"."""
        ...

    @property
    def d_in(self) -> int: ...

    @property
    def d_sae(self) -> int: ...

    @property
    def hook_name(self) -> str | None:
        """The hook the SAE names (None: it names none, e.g. Gemma Scope's params.npz outside its release folders)."""
        ...

    @property
    def centres_residual(self) -> bool:
        """Whether it read a TransformerLens residual stream made with center_writing_weights."""
        ...

    @property
    def dtype(self) -> torch.dtype: ...

    def encode(self, x: Tensor) -> Tensor:
        """Float[... d_sae]: the latents of Float[... d_in]."""
        ...


@dataclass
class SaeLensEncoder:
    """A sae-lens SAE, whose own `encode` gives the latents."""

    sae: Any
    format: str = "sae-lens"

    @property
    def d_in(self) -> int:
        return int(self.sae.cfg.d_in)

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)

    @property
    def hook_name(self) -> str | None:
        return self.sae.cfg.metadata.hook_name or None

    @property
    def centres_residual(self) -> bool:
        kwargs = getattr(self.sae.cfg.metadata, "model_from_pretrained_kwargs", None) or {}
        return bool(kwargs.get("center_writing_weights"))

    @property
    def dtype(self) -> torch.dtype:
        return self.sae.W_enc.dtype

    def encode(self, x: Tensor) -> Tensor:
        return self.sae.encode(x)


@dataclass
class SparsifyEncoder:
    """A sparsify SparseCoder: relu(W (x - b_dec) + b), then the k largest (top-k) or the maximum of each of k
    equal groups of latents (group-max); every other latent is 0."""

    weight: Tensor
    """Float[d_sae d_in]: the encoder's weight (nn.Linear layout)."""
    bias: Tensor
    b_dec: Tensor
    k: int
    activation: Literal["topk", "groupmax"]
    hook_name: str | None
    format: str = "sparsify"
    centres_residual: bool = False

    @property
    def d_in(self) -> int:
        return int(self.weight.shape[1])

    @property
    def d_sae(self) -> int:
        return int(self.weight.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.weight.dtype

    def encode(self, x: Tensor) -> Tensor:
        pre = torch.relu(torch.nn.functional.linear(x - self.b_dec, self.weight, self.bias))  # Float[... d_sae]
        if self.activation == "topk":
            values, indices = pre.topk(self.k, dim=-1, sorted=False)
        else:
            values, within = pre.unflatten(-1, (self.k, -1)).max(dim=-1)
            indices = within + torch.arange(0, self.d_sae, self.d_sae // self.k, device=pre.device)
        return torch.zeros_like(pre).scatter_(-1, indices, values)


@dataclass
class JumpReLUEncoder:
    """Gemma Scope's JumpReLU SAE: pre = x W_enc + b_enc; relu(pre) where pre > threshold, else 0 (no b_dec is
    taken from the input, as sae-lens loads Gemma Scope)."""

    W_enc: Tensor
    """Float[d_in d_sae]."""
    b_enc: Tensor
    threshold: Tensor
    hook_name: str | None
    format: str = "gemma-scope"
    centres_residual: bool = False

    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    def encode(self, x: Tensor) -> Tensor:
        pre = x @ self.W_enc + self.b_enc
        return torch.relu(pre) * (pre > self.threshold)


def detect_format(spec: str) -> str:
    """The format of a local SAE path, from its file names (see the module docstring)."""
    path = Path(spec)
    if path.is_file() and path.suffix == ".npz":
        return "gemma-scope"
    if not path.is_dir():
        if ":" in spec and not path.exists():
            return "sae-lens"  # RELEASE:SAE_ID
        raise SAEFormatError(
            f"SAE {spec!r} is neither a folder (with cfg.json and sae_weights.safetensors, or sparsify's cfg.json "
            "and sae.safetensors, or Gemma Scope's params.npz) nor RELEASE:SAE_ID"
        )
    names = {p.name for p in path.iterdir()}
    if "params.npz" in names:
        return "gemma-scope"
    if "sae.safetensors" in names:
        return "sparsify"
    if "sae_weights.safetensors" in names or "cfg.json" in names:
        return "sae-lens"
    hookpoints = sorted(p.name for p in path.iterdir() if (p / "sae.safetensors").is_file())
    if hookpoints:
        raise SAEFormatError(
            f"{spec} holds sparsify SAEs by hookpoint {hookpoints[:8]}: give one hookpoint's folder, "
            f"e.g. --sae {path / hookpoints[0]}"
        )
    raise SAEFormatError(
        f"cannot tell the format of SAE folder {spec} (found {sorted(names)[:8]}): it holds neither cfg.json + "
        "sae_weights.safetensors (sae-lens), cfg.json + sae.safetensors (sparsify) nor params.npz (Gemma Scope)"
    )


def load_encoder(spec: str, device: torch.device, sae_format: str = "auto") -> Encoder:
    """The SAE at `spec` in `sae_format` ("auto": `detect_format`), on `device`, frozen."""
    if sae_format not in FORMATS:
        raise SAEFormatError(f"unknown SAE format {sae_format!r}; choose one of {', '.join(FORMATS)}")
    kind = detect_format(spec) if sae_format == "auto" else sae_format
    if kind == "sparsify":
        return _load_sparsify(Path(spec), device)
    if kind == "gemma-scope":
        return _load_gemma_scope(Path(spec), device)
    return SaeLensEncoder(_load_sae_lens(spec, device))


def _load_sae_lens(spec: str, device: torch.device) -> Any:
    from sae_lens import SAE

    folder = Path(spec)
    if not folder.is_dir():
        if ":" in spec and not folder.exists():
            release, sae_id = spec.split(":", 1)
            try:
                return SAE.from_pretrained(release, sae_id, device=str(device))
            except Exception as err:
                raise SAEFormatError(f"cannot load SAE {sae_id!r} of release {release!r}: {err}") from err
        raise SAEFormatError(f"sae-lens SAE {spec!r} is neither a folder nor RELEASE:SAE_ID")
    cfg_path, weights = folder / "cfg.json", folder / "sae_weights.safetensors"
    if not cfg_path.is_file():
        raise SAEFormatError(f"SAE folder {folder} has no cfg.json (a sae-lens SAE folder holds cfg.json and weights)")
    cfg = _read_json(cfg_path)
    missing = [key for key in ("d_in", "d_sae") if not isinstance(cfg, dict) or key not in cfg]
    if missing:
        raise SAEFormatError(f"SAE config {cfg_path} lacks {missing}; is it a sae-lens cfg.json?")
    _check_sizes(cfg, ("d_in", "d_sae"), cfg_path)
    if not weights.is_file():
        found = sorted(p.name for p in folder.iterdir())
        raise SAEFormatError(
            f"SAE folder {folder} has no sae_weights.safetensors (found {found}); only safetensors load"
        )
    try:
        sae = SAE.load_from_disk(folder, device=str(device))
    except Exception as err:
        raise SAEFormatError(f"cannot load the SAE from {folder} (cfg.json or sae_weights.safetensors): {err}") from err
    return sae.eval().requires_grad_(False)


def _check_sizes(cfg: dict[str, Any], keys: tuple[str, ...], cfg_path: Path) -> None:
    """Sizes in an SAE config are positive JSON integers (no coercion of "abc", "32", 32.0 or true)."""
    for key in keys:
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SAEFormatError(f"SAE config {cfg_path}: {key} must be a positive integer, got {value!r}")


def _load_sparsify(folder: Path, device: torch.device) -> SparsifyEncoder:
    cfg_path, weights = folder / "cfg.json", folder / "sae.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise SAEFormatError(
            f"sparsify SAE folder {folder} needs cfg.json and sae.safetensors (SparseCoder.save_to_disk)"
        )
    cfg = _read_json(cfg_path)
    if not isinstance(cfg, dict) or "d_in" not in cfg:
        raise SAEFormatError(f"sparsify config {cfg_path} lacks d_in; is it a sparsify cfg.json?")
    _check_sizes(cfg, ("d_in",), cfg_path)
    if cfg.get("transcode"):
        raise SAEFormatError(f"{folder} is a sparsify transcoder (transcode: true); only autoencoders harvest")
    activation = cfg.get("activation", "topk")
    if activation not in ("topk", "groupmax"):
        raise SAEFormatError(f"sparsify activation {activation!r} of {cfg_path} is neither topk nor groupmax")
    tensors = load_file(str(weights), device=str(device))
    missing = [key for key in ("encoder.weight", "encoder.bias", "b_dec") if key not in tensors]
    if missing:
        raise SAEFormatError(f"{weights} lacks {missing} (found {sorted(tensors)})")
    weight = tensors["encoder.weight"]
    k = int(cfg.get("k", 32))
    if weight.shape[1] != cfg["d_in"] or not 0 < k <= weight.shape[0]:
        raise SAEFormatError(f"{folder}: encoder weight {tuple(weight.shape)} does not fit d_in={cfg['d_in']}, k={k}")
    if activation == "groupmax" and weight.shape[0] % k:
        raise SAEFormatError(f"{folder}: group-max needs the {weight.shape[0]} latents to split into k={k} groups")
    return SparsifyEncoder(
        weight, tensors["encoder.bias"], tensors["b_dec"], k, activation, hook_name=folder.resolve().name
    )


def _load_gemma_scope(path: Path, device: torch.device) -> JumpReLUEncoder:
    file = path if path.is_file() else path / "params.npz"
    try:
        params = np.load(file)
    except (OSError, ValueError) as err:
        raise SAEFormatError(f"cannot read Gemma Scope params {file}: {err}") from err
    missing = [key for key in ("W_enc", "b_enc", "threshold") if key not in params.files]
    if missing:
        raise SAEFormatError(f"{file} lacks {missing} (found {params.files}); Gemma Scope's keys are W_enc, b_enc, ...")

    def tensor(key: str) -> Tensor:
        try:
            array = np.asarray(params[key], dtype=np.float32)
        except ValueError as err:  # a pickled (object) array: numpy refuses it, and so does labeler
            if "allow_pickle" not in str(err):
                raise SAEFormatError(f"{file}: array {key!r} cannot be read as numbers: {err}") from err
            raise SAEFormatError(
                f"{file}: array {key!r} is a pickled object array, not numbers; labeler never unpickles a file (that "
                "runs code the file holds). Gemma Scope's params.npz holds plain float arrays: save them as such, "
                "e.g. np.savez(path, **{name: np.asarray(value, dtype=np.float32) for name, value in params.items()})"
            ) from None
        return torch.as_tensor(array, device=device)

    W_enc = tensor("W_enc")
    if W_enc.ndim != 2 or tensor("b_enc").shape != (W_enc.shape[1],) or tensor("threshold").shape != (W_enc.shape[1],):
        raise SAEFormatError(f"{file}: W_enc {tuple(W_enc.shape)}, b_enc and threshold do not fit [d_in, d_sae]")
    return JumpReLUEncoder(W_enc, tensor("b_enc"), tensor("threshold"), hook_name=_gemma_scope_hook(file))


def _gemma_scope_hook(file: Path) -> str | None:
    """blocks.N.hook_resid_post for `.../gemma-scope-*-res*/layer_N/...`; else None (mlp and attention SAEs read
    TransformerLens hooks that no HF module outputs as such)."""
    parts = file.resolve().parts
    layer = next((m for part in parts if (m := re.fullmatch(r"layer_(\d+)", part))), None)
    if layer is not None and any(re.search(r"gemma-scope.*-res", part) for part in parts):
        return f"blocks.{layer.group(1)}.hook_resid_post"
    return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SAEFormatError(f"SAE config {path} is not valid JSON: {err}") from err
