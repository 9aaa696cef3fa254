"""Direct-effect claims (direct logit attribution): what a head or layer writes straight into the
logit difference expect − foil at the answer position::

    direct(heads[1.0]) >= 3.0                          each listed head, in logits
    direct(heads[1.0, 1.3]) together >= 0.6 of logit_diff   their sum, as a fraction of m_clean
    direct(mlp_out[1]) <= 0.5                          an MLP layer (attn_out[L]: a whole attention layer)
    direct(heads[elsewhere]) <= 1.0                    every head no other direct claim names

A component's output c at the last position reaches the logits through the final LayerNorm with the
clean run's scale (TransformerLens ``apply_ln_to_stack``): its direct effect is
((c − mean c) / scale) · (w ⊙ (W_U[expect] − W_U[foil])) — without the centering for RMSNorm. Heads
contribute z · W_O (their share before the output bias). The decomposition is complete: embeddings +
every head + every attention bias + every MLP + the final norm's and unembedding's biases = m_clean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from interptest.claims.attention import elsewhere_heads
from interptest.claims.base import BindContext, Claim, Measurement
from interptest.claims.grammar import (
    ClaimBindError,
    ClaimSyntaxError,
    Comparison,
    LayerSelection,
    Parser,
    did_you_mean,
    resolve_heads,
    resolve_layers,
)

TARGETS = ("heads", "attn_out", "mlp_out")


@dataclass(frozen=True)
class DirectClaim(Claim):
    text: str
    target: str  # heads | attn_out | mlp_out
    heads: tuple[tuple[int, int], ...]
    layers: LayerSelection | None
    quantifier: str  # every | together (the sum)
    comparison: Comparison
    elsewhere: bool = False
    relative: bool = False  # "of logit_diff": divided by m_clean

    keywords: ClassVar[tuple[str, ...]] = ("direct",)
    hint: ClassVar[str] = "direct(heads[...])"

    @property
    def bind_late(self) -> bool:
        return self.elsewhere

    @classmethod
    def parse(cls, p: Parser) -> DirectClaim:
        p.expect("ident", "direct")
        p.expect("punct", "(", "'(' after direct")
        target = p.tok
        if target.kind != "ident" or target.value not in TARGETS:
            found = target.value if target.kind == "ident" else ""
            if found in ("resid_pre", "resid_mid", "resid_post"):
                raise ClaimSyntaxError(
                    f"{found} has no direct path of its own to the logits (it is the sum of "
                    "everything before it); direct() takes heads[...], attn_out[LAYERS] or "
                    "mlp_out[LAYERS]",
                    p.text,
                    target.start,
                )
            p.fail(
                "heads[...], attn_out[LAYERS] or mlp_out[LAYERS]" + did_you_mean(found, TARGETS)
                if found
                else "heads[...], attn_out[LAYERS] or mlp_out[LAYERS]"
            )
        p.i += 1
        p.expect("punct", "[", f"'[' after {target.value}")
        heads: tuple[tuple[int, int], ...] = ()
        layers: LayerSelection | None = None
        elsewhere = False
        if p.accept("ident", "elsewhere"):
            elsewhere = True
        elif target.value == "heads":
            heads = p.head_list()
        else:
            layers = p.layers()
        p.expect("punct", "]", "']'")
        p.expect("punct", ")", "')'")
        quantifier = "together" if p.accept("ident", "together") else "every"
        comparison = p.comparison()
        relative = False
        if p.accept("ident", "of"):
            p.expect("ident", "logit_diff", "'logit_diff' after 'of' (a fraction of m_clean)")
            relative = True
        p.end()
        return cls(p.text, target.value, heads, layers, quantifier, comparison, elsewhere, relative)

    def requirement(self, behavior) -> str | None:
        if behavior.corruption is None and behavior.foil is None:
            return (
                "direct effects are measured on the logit difference expect − foil: add 'foil' or 'corrupt' "
                "(the foil defaults to the model's top-1 prediction on the corrupted prompt)"
            )
        if self.elsewhere and not any(
            isinstance(c, DirectClaim) and c.target == self.target and not c.elsewhere for c in behavior.claims
        ):
            return (
                f"direct({self.target}[elsewhere]) needs another direct({self.target}[...]) claim in the same "
                "behavior to define what 'elsewhere' excludes"
            )
        return None

    def bind(self, context: BindContext):
        key = f"direct:{self.target}"
        cells: tuple[tuple[int, ...], ...]  # (layer, head) pairs or (layer,) 1-tuples
        if self.target == "heads":
            if self.elsewhere:
                return elsewhere_heads(context, key, "direct(heads")
            cells = tuple(resolve_heads(self.heads, context.n_layers, context.n_heads))
        elif self.elsewhere:
            named = context.covered.get(key)
            if named is None:
                raise ClaimBindError(
                    f"direct({self.target}[elsewhere]) needs another direct({self.target}[...]) "
                    "claim in the same behavior"
                )
            cells = tuple((layer,) for layer in range(context.n_layers) if (layer,) not in named)
            if not cells:
                raise ClaimBindError(f"direct({self.target}[elsewhere]) is empty: the other claims name every layer")
            return cells
        else:
            assert self.layers is not None, "the grammar reads layers for attn_out and mlp_out"
            cells = tuple((layer,) for layer in resolve_layers(self.layers, context.n_layers))
        context.covered.setdefault(key, set()).update(cells)
        return cells

    def measure(self, cells, run) -> Measurement:
        import torch

        effects = run.memo("direct_effects", lambda: direct_effects(run))
        table = effects[self.target]  # heads: [S, L, H]; layers: [S, L]
        values = torch.stack([table[(slice(None),) + tuple(cell)] for cell in cells], dim=1)
        if self.relative:
            values = values / run.clean_metrics[:, None]
        figure = {
            "type": "direct",
            "relative": self.relative,
            "heads": (effects["heads"] / (run.clean_metrics[:, None, None] if self.relative else 1))
            .mean(dim=0)
            .tolist(),
            "mlp_out": (effects["mlp_out"] / (run.clean_metrics[:, None] if self.relative else 1)).mean(dim=0).tolist(),
            "claimed": [list(c) for c in cells] if self.target == "heads" and not self.elsewhere else [],
        }
        labels = [f"head {c[0]}.{c[1]}" if len(c) == 2 else f"{self.target}[{c[0]}]" for c in cells]
        if self.quantifier == "together":
            return Measurement(
                values.sum(dim=1, keepdim=True),
                quantifier="together",
                note=f"sum over {len(cells)} {'heads' if self.target == 'heads' else 'layers'}",
                figure=figure,
            )
        return Measurement(values, cells, labels, figure=figure)

    def unit(self) -> str:
        return "normalized" if self.relative else "logits"

    def render(self, check, color: bool = False) -> list[str]:
        figure = check.figure
        if not figure:
            return []
        unit = " of m_clean" if figure["relative"] else ""
        parts = [(f"head {l}.{h}", v) for l, row in enumerate(figure["heads"]) for h, v in enumerate(row)]
        parts += [(f"mlp_out[{l}]", v) for l, v in enumerate(figure["mlp_out"])]
        parts.sort(key=lambda p: -abs(p[1]))
        return [
            "",
            f"  largest direct effects{unit} (sample means): "
            + ", ".join(f"{name} {value:+.2f}" for name, value in parts[:6]),
        ]


def direct_effects(run) -> dict:
    """Every component's direct effect on expect − foil at the last position, per sample (float64, CPU):
    {"heads": [S, L, H], "attn_out": [S, L], "attn_bias": [S, L], "mlp_out": [S, L], "embed": [S],
    "bias": [S]} — the parts sum to m_clean."""
    import torch

    model = run.model
    cfg = model.cfg
    n_layers = int(cfg.n_layers)
    names = ["ln_final.hook_scale", "hook_embed"]
    if getattr(cfg, "positional_embedding_type", "standard") == "standard" and "hook_pos_embed" in model.hook_dict:
        names.append("hook_pos_embed")  # rotary models have the hook, but it never fires
    for layer in range(n_layers):
        names += [f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.hook_attn_out", f"blocks.{layer}.hook_mlp_out"]
    acts = run.activations("clean", names)

    def cpu(t):
        return None if t is None else t.detach().double().cpu()

    w_u = cpu(model.W_U)
    b_u = cpu(getattr(model, "b_U", None))
    e, f = run.expect_first, run.foil_ids
    direction = (w_u[:, e] - w_u[:, f]).T  # [S, d]
    ln = model.ln_final
    weight, ln_bias = cpu(getattr(ln, "w", None)), cpu(getattr(ln, "b", None))
    centered = str(cfg.normalization_type).startswith("LN")
    unit = direction * weight if weight is not None else direction
    scale = acts["ln_final.hook_scale"][:, -1].double()  # [S, 1]

    def through_ln(c):  # c: [S, ..., d] at the last position
        if centered:
            c = c - c.mean(dim=-1, keepdim=True)
        extra = (1,) * (c.ndim - 2)
        return (c / scale.reshape(-1, *extra, 1) * unit.reshape(unit.shape[0], *extra, -1)).sum(-1)

    w_o = cpu(model.W_O)  # [L, H, dh, d]
    b_o = cpu(getattr(model, "b_O", None))
    b_v = _value_biases(model, w_o.shape)  # [L, H, dh]
    heads, attn_out, attn_bias, mlp_out = [], [], [], []
    for layer in range(n_layers):
        # A head's value bias reaches the output whatever the head attends to (attention rows sum to 1):
        # it counts with the layer's output bias, as in TransformerLens's folded models (fold_value_biases).
        z = acts[f"blocks.{layer}.attn.hook_z"][:, -1].double() - b_v[layer]  # [S, H, dh]
        heads.append(through_ln(torch.einsum("shk,hkd->shd", z, w_o[layer])))
        attn_out.append(through_ln(acts[f"blocks.{layer}.hook_attn_out"][:, -1].double()))
        bias = b_o[layer] if b_o is not None else torch.zeros(w_u.shape[0], dtype=torch.float64, device="cpu")
        bias = bias + torch.einsum("hk,hkd->d", b_v[layer], w_o[layer])
        attn_bias.append(through_ln(bias.expand(scale.shape[0], -1)))
        mlp_out.append(through_ln(acts[f"blocks.{layer}.hook_mlp_out"][:, -1].double()))
    embed = acts["hook_embed"][:, -1].double()
    if "hook_pos_embed" in acts:
        embed = embed + acts["hook_pos_embed"][:, -1].double()
    constant = torch.zeros(scale.shape[0], dtype=torch.float64, device="cpu")
    if ln_bias is not None:
        constant = constant + direction @ ln_bias
    if b_u is not None:
        constant = constant + (b_u[e] - b_u[f])
    return {
        "heads": torch.stack(heads, dim=1),
        "attn_out": torch.stack(attn_out, dim=1),
        "attn_bias": torch.stack(attn_bias, dim=1),
        "mlp_out": torch.stack(mlp_out, dim=1),
        "embed": through_ln(embed),
        "bias": constant,
    }


def _value_biases(model, w_o_shape):
    """[L, H, dh] the constant part of each query head's z: its value bias plus the attention LayerNorm's
    bias through W_V (what TransformerLens's fold_ln + fold_value_biases move into the output bias).
    Zeros for bias-free models; grouped-query models repeat a key/value head's part for its query heads."""
    import torch

    n_layers, n_heads, d_head = w_o_shape[0], w_o_shape[1], w_o_shape[2]

    def stacked(name):
        try:
            value = getattr(model, name)
        except AttributeError:  # the bridge says so for checkpoints without such parameters
            return None
        return None if value is None else value.detach().double().cpu()

    b_v, w_v = stacked("b_V"), stacked("W_V")  # [L, Hkv, dh], [L, Hkv, d, dh]
    const = torch.zeros(
        n_layers, w_v.shape[1] if w_v is not None else n_heads, d_head, dtype=torch.float64, device="cpu"
    )
    if b_v is not None:
        const = const + b_v
    if w_v is not None:
        for layer in range(n_layers):
            ln_bias = getattr(getattr(model.blocks[layer], "ln1", None), "b", None)
            if ln_bias is not None:
                const[layer] += torch.einsum("d,hdk->hk", ln_bias.detach().double().cpu(), w_v[layer])
    if const.shape[1] != n_heads:
        const = const.repeat_interleave(n_heads // const.shape[1], dim=1)
    return const
