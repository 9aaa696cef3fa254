"""interptest.tl_compat, the one place that knows where the installed TransformerLens keeps its pieces
(issue 18): these run in both CI environments (TransformerLens 4.x and 3.x) against the installed one."""

from __future__ import annotations

import pytest

from interptest import tl_compat


def test_bridge_class_is_the_installed_transformer_bridge_with_boot_transformers():
    import transformer_lens.model_bridge as mb

    cls = tl_compat.bridge_class()
    assert cls is mb.TransformerBridge and callable(cls.boot_transformers)
    if tl_compat.tl_version_tuple() >= (4,):
        import transformer_lens

        assert cls is transformer_lens.TransformerBridge


def test_hooked_transformer_exists_exactly_before_4():
    cls = tl_compat.hooked_transformer_class()
    assert (cls is None) == (tl_compat.tl_version_tuple() >= (4,))


def test_installed_alias_table_resolves_gpt2_small():
    aliases = tl_compat.model_aliases()
    assert "gpt2-small" in aliases["gpt2"] and len(aliases) > 100


def test_a_3x_alias_table_is_read_without_executing_the_module(tmp_path):
    source = tmp_path / "supported_models.py"
    source.write_text(
        'raise RuntimeError("executed")\n'
        'OFFICIAL_MODEL_NAMES = ["gpt2"]\n'
        "MODEL_ALIASES: dict[str, list[str]] = {\n"
        '    "gpt2": ["gpt2-small", "gpt2"],\n'
        '    "EleutherAI/pythia-70m": ["pythia-70m"],\n'
        "}\n"
    )
    assert tl_compat._aliases_from_source(source) == {
        "gpt2": ["gpt2-small", "gpt2"],
        "EleutherAI/pythia-70m": ["pythia-70m"],
    }
    source.write_text("OTHER = {}\n")
    with pytest.raises(KeyError):
        tl_compat._aliases_from_source(source)


@pytest.mark.parametrize(
    "text, parsed", [("4.3.0", (4, 3, 0)), ("3.2.1", (3, 2, 1)), ("4.0.0rc1", (4, 0, 0)), ("3.9.0+local", (3, 9, 0))]
)
def test_version_tuple(monkeypatch, text, parsed):
    monkeypatch.setattr(tl_compat, "tl_version", lambda: text)
    assert tl_compat.tl_version_tuple() == parsed
    assert tl_compat.cpu_device_map_supported() == (parsed >= (3, 8))


def test_hook_for_maps_bridge_receiver_hooks_to_a_hooked_transformers():
    class Hooked:
        hook_dict = {
            "blocks.1.ln2.hook_normalized": None,
            "ln_final.hook_normalized": None,
            "blocks.1.attn.hook_q": None,
        }

    class Bridge:
        hook_dict = dict.fromkeys(["blocks.1.mlp.hook_in", "ln_final.hook_in"])

    assert tl_compat.hook_for(Hooked(), "blocks.1.mlp.hook_in") == "blocks.1.ln2.hook_normalized"
    assert tl_compat.hook_for(Hooked(), "ln_final.hook_in") == "ln_final.hook_normalized"
    assert tl_compat.hook_for(Hooked(), "blocks.1.attn.hook_q") == "blocks.1.attn.hook_q"
    assert tl_compat.hook_for(Hooked(), "blocks.7.mlp.hook_in") == "blocks.7.mlp.hook_in"  # no such layer: unchanged
    assert tl_compat.hook_for(Bridge(), "blocks.1.mlp.hook_in") == "blocks.1.mlp.hook_in"
    assert tl_compat.hook_for(Bridge(), "ln_final.hook_in") == "ln_final.hook_in"


def test_device_map_refusal_names_the_version_and_only_that_refusal():
    refused = ValueError("device_map['']='cpu' is not supported. Multi-device bridge support is GPU-only in v1; ...")
    message = tl_compat.device_map_refusal(refused, "gpt2")
    assert message is not None and message.startswith(
        f"model 'gpt2': TransformerLens {tl_compat.tl_version()} (installed) accepts a device_map only across GPUs"
    )
    assert tl_compat.device_map_refusal(ValueError("out of memory"), "gpt2") is None
