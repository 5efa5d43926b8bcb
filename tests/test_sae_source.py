"""labeler/harvest/sae_source.py: hook names mapped onto a model's modules, and the latents an SAE reads there."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_gpt2, tiny_llama, word_tokenizer
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

from labeler.harvest.sae_source import SourceError, load_source, resolve_hook

D_SAE = 48


def test_hook_mapping_on_llama_and_module_paths() -> None:
    from conftest import tiny_llama

    from labeler.harvest.sae_source import HookedActivations, resolve_hook

    model = tiny_llama(40)
    ids = torch.randint(0, 40, (2, 6))
    hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
    pre = resolve_hook(model, "blocks.1.hook_resid_pre")
    assert (pre.module, pre.side) == ("model.layers.1", "input")
    torch.testing.assert_close(HookedActivations(model, pre)(ids, torch.ones_like(ids)), hidden[1])
    post = resolve_hook(model, "blocks.0.hook_resid_post")
    torch.testing.assert_close(HookedActivations(model, post)(ids, torch.ones_like(ids)), hidden[1])
    mlp = resolve_hook(model, "model.layers.0.mlp")
    assert HookedActivations(model, mlp)(ids, torch.ones_like(ids)).shape == (2, 6, 32)
    with pytest.raises(SourceError, match=r"neither blocks\.N\.hook_resid_pre/post nor a module"):
        resolve_hook(model, "blocks.0.hook_attn_z")


@pytest.mark.parametrize("center", [False, True])
def test_latents_match_transformer_lens_with_and_without_center_writing_weights(tmp_path: Path, center: bool) -> None:
    """An SAE trained on TransformerLens's GPT-2 reads what TL's hook gives; with center_writing_weights that is
    the HF residual stream minus its mean over d_model (reference: TL itself, on the same weights)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

    torch.manual_seed(0)
    tokenizer = word_tokenizer()
    hf = tiny_gpt2(len(tokenizer))
    with torch.no_grad():  # a nonzero mean over d_model, as real GPT-2's residual stream has
        hf.transformer.wte.weight += 0.5 * torch.randn(len(tokenizer), 1)
    hf.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    c = hf.config
    tl_config = HookedTransformerConfig(
        n_layers=c.n_layer,
        d_model=c.n_embd,
        d_head=c.n_embd // c.n_head,
        n_heads=c.n_head,
        d_mlp=4 * c.n_embd,
        d_vocab=c.vocab_size,
        n_ctx=c.n_positions,
        act_fn="gelu_new",
        normalization_type="LN",
    )
    tl = HookedTransformer(tl_config)
    tl.load_and_process_state_dict(
        convert_gpt2_weights(hf, tl_config), fold_ln=True, center_writing_weights=center, center_unembed=True
    )
    sae = StandardSAE(
        StandardSAEConfig(
            d_in=c.n_embd,
            d_sae=D_SAE,
            metadata=SAEMetadata(
                hook_name="blocks.1.hook_resid_post", model_from_pretrained_kwargs={"center_writing_weights": center}
            ),
        )
    )
    sae.save_model(tmp_path / "sae")
    source = load_source(str(tmp_path / "sae"), str(tmp_path / "model"), device="cpu")
    ids = torch.randint(0, len(tokenizer), (2, 9))
    _, cache = tl.run_with_cache(ids)
    expected = source.sae.encode(cache["blocks.1.hook_resid_post"])
    torch.testing.assert_close(source.latents(ids, torch.ones_like(ids)), expected, atol=1e-4, rtol=1e-4)


def test_hook_names_under_every_spelling_and_the_nearest_names_on_error() -> None:
    """On the causal LM and on its base model, `model.layers.0.mlp`, `layers.0.mlp` name the same module; a
    misspelt hook's error lists the nearest valid names."""
    causal = tiny_llama(40)
    base = causal.model
    for model, path in ((causal, "model.layers.0.mlp"), (base, "layers.0.mlp")):
        for name in ("model.layers.0.mlp", "layers.0.mlp"):
            hook = resolve_hook(model, name)
            assert (hook.name, hook.module, hook.side) == (name, path, "output")
            assert model.get_submodule(hook.module) is base.layers[0].mlp
    with pytest.raises(SourceError, match=r"nearest valid names: .*model\.layers\.0\.mlp") as err:
        resolve_hook(base, "model.layers.0.mpl")
    assert "neither blocks.N.hook_resid_pre/post nor a module" in str(err.value)
    with pytest.raises(SourceError, match=r"nearest valid names: blocks\.1\.hook_resid_post"):
        resolve_hook(base, "blocks.1.hook_resid_pots")
