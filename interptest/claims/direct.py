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
from interptest.errors import InterpError
from interptest.tl_compat import tl_version

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
        why = context.unsupported.get("direct")
        if why:
            raise ClaimBindError(f"direct() is not supported on {context.architecture or 'this model'}: {why}")
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
        m = effects["m"]  # what the parts sum to: m_clean, or its pre-cap value on a soft-capped model
        if self.relative:
            values = values / m[:, None]
        figure = {
            "type": "direct",
            "relative": self.relative,
            "heads": (effects["heads"] / (m[:, None, None] if self.relative else 1)).mean(dim=0).tolist(),
            "mlp_out": (effects["mlp_out"] / (m[:, None] if self.relative else 1)).mean(dim=0).tolist(),
            "claimed": [list(c) for c in cells] if self.target == "heads" and not self.elsewhere else [],
            "samples": int(values.shape[0]),  # means over a family's samples; one prompt's own values
        }
        capped = output_transform(run.model)
        context = (
            f"pre-cap logits: {architecture(run.model)} {capped}; direct effects sum to the logit difference "
            f"before it ({float(m.mean()):z.3f})"
            if capped
            else ""
        )
        labels = [f"head {c[0]}.{c[1]}" if len(c) == 2 else f"{self.target}[{c[0]}]" for c in cells]
        if self.quantifier == "together":
            return Measurement(
                values.sum(dim=1, keepdim=True),
                quantifier="together",
                note=f"sum over {len(cells)} {'heads' if self.target == 'heads' else 'layers'}",
                figure=figure,
                context=context,
            )
        return Measurement(values, cells, labels, figure=figure, context=context)

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
            f"  largest direct effects{unit}{' (sample means)' if figure.get('samples', 1) > 1 else ''}: "
            + ", ".join(f"{name} {value:+z.2f}" for name, value in parts[:6]),
        ]


def direct_effects(run) -> dict:
    """Every component's direct effect on expect − foil at the last position, per sample (float64, CPU):
    {"heads": [S, L, H], "attn_out": [S, L], "attn_bias": [S, L], "mlp_out": [S, L], "embed": [S],
    "bias": [S], "m": [S]} — the parts sum to "m", the logit difference before the architecture's output
    transform (its final-logit soft cap), which is m_clean on a model without one.

    Every normalisation is the model's own, read from its bridge component (LayerNorm or RMSNorm, a weight
    ``w`` or Gemma's ``1 + w``, a bias or none) with its scale frozen at the clean run's value: the final
    norm, and the norm some architectures (Gemma 2/3, OLMo 2) apply to the attention output before the
    residual add, which a head's share goes through too. A layer's heads and its attention bias then sum to
    its ``attn_out`` exactly."""
    import torch

    model = run.model
    cfg = model.cfg
    n_layers = int(cfg.n_layers)
    post = [getattr(model.blocks[layer], "ln1_post", None) for layer in range(n_layers)]
    names = hooks_needed(n_layers)
    for layer in range(n_layers):
        if post[layer] is not None:
            names.append(f"blocks.{layer}.ln1_post.hook_scale")
    acts = run.activations("clean", names)

    w_u = _tensor(model, "W_U")
    b_u = _tensor(model, "b_U")
    e, f = run.expect_first, run.foil_ids
    direction = (w_u[:, e] - w_u[:, f]).T  # [S, d]
    d_model = int(cfg.d_model)
    final = frozen_norm(model.ln_final, d_model)
    scale = acts["ln_final.hook_scale"][:, -1].double()  # [S, 1]

    def through_ln(c):  # c: [S, ..., d] at the last position, through the final norm (no bias)
        extra = (1,) * (c.ndim - 2)
        return (final(c, scale.reshape(-1, *extra, 1)) * direction.reshape(direction.shape[0], *extra, -1)).sum(-1)

    w_o = _output_weights(model)  # [L, H, dh, d]
    b_v = _value_biases(model, w_o.shape)  # [L, H, dh]
    heads, attn_out, attn_bias, mlp_out = [], [], [], []
    for layer in range(n_layers):
        # A head's value bias reaches the output whatever the head attends to (attention rows sum to 1):
        # it counts with the layer's output bias, as in TransformerLens's folded models (fold_value_biases).
        z = acts[f"blocks.{layer}.attn.hook_z"][:, -1].double() - b_v[layer]  # [S, H, dh]
        share = torch.einsum("shk,hkd->shd", z, w_o[layer])  # [S, H, d]
        bias = _output_bias(model, layer, d_model) + torch.einsum("hk,hkd->d", b_v[layer], w_o[layer])
        bias = bias.expand(scale.shape[0], -1)
        if post[layer] is not None:  # normalised before the residual add: linear with the clean run's scale
            norm = frozen_norm(post[layer], d_model)
            s_post = acts[f"blocks.{layer}.ln1_post.hook_scale"][:, -1].double()  # [S, 1]
            share = norm(share, s_post[:, None])
            bias = norm(bias, s_post) + norm.bias
        heads.append(through_ln(share))
        attn_out.append(through_ln(acts[f"blocks.{layer}.hook_attn_out"][:, -1].double()))
        attn_bias.append(through_ln(bias))
        mlp_out.append(through_ln(acts[f"blocks.{layer}.hook_mlp_out"][:, -1].double()))
    # the embeddings as the residual stream receives them (positions, Gemma's sqrt(d_model) scale included)
    embed = through_ln(acts["blocks.0.hook_resid_pre"][:, -1].double())
    constant = direction @ final.bias
    if b_u is not None:
        constant = constant + (b_u[e] - b_u[f])
    out = {
        "heads": torch.stack(heads, dim=1),
        "attn_out": torch.stack(attn_out, dim=1),
        "attn_bias": torch.stack(attn_bias, dim=1),
        "mlp_out": torch.stack(mlp_out, dim=1),
        "embed": embed,
        "bias": constant,
    }
    # What the parts must sum to: the logit difference the unembedding gives before any output transform,
    # from the final residual through the model's own final norm.
    resid = acts[f"blocks.{n_layers - 1}.hook_resid_post"][:, -1].double()
    logits2 = final(resid, scale) + final.bias
    out["m"] = (logits2 * direction).sum(-1) + (0 if b_u is None else b_u[e] - b_u[f])
    total = out["heads"].sum((1, 2)) + out["attn_bias"].sum(1) + out["mlp_out"].sum(1) + embed + constant
    if not torch.allclose(total, out["m"], rtol=1e-4, atol=1e-4 * (1 + float(out["m"].abs().max()))):
        # never a number that means something else: an architecture whose residual stream this reading
        # does not decompose (an unknown norm placement, a scaled residual) is refused, not approximated
        raise InterpError(
            f"direct effects on {architecture(model)} do not add up to the logit difference "
            f"({float(total[0]):z.4f} vs {float(out['m'][0]):z.4f} on the first sample): this architecture's "
            "residual stream is not a sum of its components' outputs as interptest reads them; direct() is "
            "not supported on it"
        )
    return out


def hooks_needed(n_layers: int) -> list[str]:
    """The hook points :func:`direct_effects` reads (the post-attention norms' scales aside: optional)."""
    names = ["ln_final.hook_scale", "blocks.0.hook_resid_pre", f"blocks.{n_layers - 1}.hook_resid_post"]
    for layer in range(n_layers):
        names += [f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.hook_attn_out", f"blocks.{layer}.hook_mlp_out"]
    return names


def unsupported_reason(model) -> str | None:
    """Why direct() cannot be defined on this model, as far as its structure tells before any forward
    (None: it can; the run still checks that the parts add up). A hook point the decomposition reads that
    the bridge does not expose (TransformerLens 3.2.1's OPT has no hook_mlp_out) is such a reason."""
    hooks = getattr(model, "hook_dict", None)
    if hooks is None:
        return None
    missing = [name for name in hooks_needed(int(model.cfg.n_layers)) if name not in hooks]
    if not missing:
        return None
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    return (
        f"its TransformerBridge (TransformerLens {tl_version()}) exposes no {shown}, which the direct "
        "decomposition reads"
    )


def output_transform(model) -> str:
    """What the architecture does to the logits after the unembedding, in words ("" for nothing): a final
    soft cap ``cap · tanh(logits / cap)`` (Gemma 2 and 3), or a transform its TransformerLens adapter
    declares."""
    cap = getattr(model.cfg, "output_logits_soft_cap", None)
    if cap is not None and float(cap) > 0:
        return f"soft-caps its logits at {float(cap):g}"
    adapter = getattr(model, "adapter", None)
    own = getattr(type(adapter), "apply_output_logits_transform", None)
    for base in type(adapter).__mro__[1:]:
        inherited = base.__dict__.get("apply_output_logits_transform")
        if inherited is not None:
            return "" if own is inherited else f"transforms its logits after the unembedding ({type(adapter).__name__})"
    return ""


def architecture(model) -> str:
    """The model's Hugging Face architecture (e.g. ``Gemma2ForCausalLM``), for messages."""
    return str(getattr(model.cfg, "architecture", None) or type(getattr(model, "original_model", model)).__name__)


def _tensor(model, name):
    """A stacked parameter of the bridge (W_U, W_O, b_U, ...) as float64 on the CPU; None where the
    architecture has none (the bridge raises for a bias-free checkpoint)."""
    try:
        value = getattr(model, name)
    except (AttributeError, TypeError, KeyError):
        return None
    return None if value is None else value.detach().double().cpu()


def _output_weights(model):
    """[L, H, dh, d] each head's rows of the attention output projection, read from the projection module
    in its own layout: a ``Linear`` stores [out, in], GPT-2's ``Conv1D`` [in, out]. The bridge's stacked
    ``W_O`` cannot be trusted with this: TransformerLens 3.x guesses the layout from the weight's shape,
    and a square one (d_model = heads × d_head) is read as [in, out] whatever the module, so every
    ``Linear`` model's W_O came back transposed within each head (the heads then summed to 7.58 where
    NeoX's logit difference is 6.38). Falls back to the bridge's ``W_O`` where a layer has no ``o``."""
    import torch

    cfg = model.cfg
    n_heads, d_model = int(cfg.n_heads), int(cfg.d_model)
    layers = []
    for block in model.blocks:
        module = getattr(getattr(getattr(block, "attn", None), "o", None), "original_component", None)
        weight = _param(module, "weight")
        if weight is None or weight.ndim != 2:
            return _tensor(model, "W_O")
        if hasattr(module, "in_features"):  # torch Linear (and subclasses such as FalconLinear): [out, in]
            weight = weight.T
        elif not hasattr(module, "nf"):  # neither Linear nor Conv1D: the bridge's own reading
            return _tensor(model, "W_O")
        if weight.shape[1] != d_model:
            return _tensor(model, "W_O")
        layers.append(weight.reshape(n_heads, -1, d_model))
    return torch.stack(layers)


def _output_bias(model, layer: int, d_model: int):
    """[d] the attention output projection's bias of ``layer``; zeros where the architecture has none."""
    import torch

    o = getattr(model.blocks[layer].attn, "o", None)
    bias = None
    if o is not None:
        try:
            bias = o.bias
        except (AttributeError, TypeError):
            bias = None
    if bias is None:
        b_o = _tensor(model, "b_O")
        return b_o[layer] if b_o is not None else torch.zeros(d_model, dtype=torch.float64, device="cpu")
    return bias.detach().double().cpu()


class frozen_norm:
    """A bridge normalisation with its scale given: x -> (x − mean x) / scale · w (RMSNorm: no centering;
    Gemma: 1 + w; no weight: 1), its bias apart (``.bias``: [d], zeros where there is none). Read from the
    bridge component, as its own forward computes it (NormalizationBridge._apply_weight_and_bias)."""

    def __init__(self, norm, d_model: int):
        import torch

        self.centered = not bool(getattr(norm, "uses_rms_norm", False))
        weight = _param(norm, "weight")
        if weight is not None and _weight_offset(norm, weight, self.centered):
            weight = 1.0 + weight
        self.weight = weight
        bias = _param(getattr(norm, "original_component", None), "bias") if self.centered else None
        if bias is None:
            bias = torch.zeros(d_model, dtype=torch.float64, device="cpu")
        self.bias = bias

    def __call__(self, c, scale):
        if self.centered:
            c = c - c.mean(dim=-1, keepdim=True)
        c = c / scale
        return c * self.weight if self.weight is not None else c


def _weight_offset(norm, weight, centered: bool) -> bool:
    """Whether the norm scales by ``1 + w`` (Gemma) rather than ``w``. TransformerLens 4.x's bridge says so
    (``uses_weight_offset``); 3.x's has no such attribute and runs the Hugging Face module itself, so ask
    that module: one probe row through it, compared with both readings (exact to float rounding)."""
    import torch

    said = getattr(norm, "uses_weight_offset", None)
    if said is not None:
        return bool(said)
    module = getattr(norm, "original_component", None)
    if module is None or not callable(module):
        return False
    param = getattr(module, "weight", None)
    if param is None:
        return False
    x = torch.linspace(-1.0, 2.0, weight.shape[-1], dtype=torch.float64)
    try:
        with torch.no_grad():
            y = module(x.to(dtype=param.dtype, device=param.device)[None])[0].double().cpu()
    except Exception:  # a module that takes more than a tensor: the bridge's own reading
        return False
    c = x - x.mean() if centered else x
    n = c / (c.pow(2).mean() + float(getattr(module, "eps", getattr(module, "variance_epsilon", 1e-6)))).sqrt()
    bias = _param(module, "bias") if centered else None
    if bias is not None:
        y = y - bias
    return float((y - n * (1.0 + weight)).abs().max()) < float((y - n * weight).abs().max())


def _param(module, name: str):
    if module is None:
        return None
    try:
        value = getattr(module, name)
    except (AttributeError, TypeError):
        return None
    return value.detach().double().cpu() if value is not None else None


def _value_biases(model, w_o_shape):
    """[L, H, dh] the constant part of each query head's z: its value bias plus the attention LayerNorm's
    bias through W_V (what TransformerLens's fold_ln + fold_value_biases move into the output bias).
    Zeros for bias-free models; grouped-query models repeat a key/value head's part for its query heads."""
    import torch

    n_layers, n_heads, d_head = w_o_shape[0], w_o_shape[1], w_o_shape[2]
    b_v, w_v = _tensor(model, "b_V"), _tensor(model, "W_V")  # [L, Hkv, dh], [L, Hkv, d, dh]
    const = torch.zeros(
        n_layers, w_v.shape[1] if w_v is not None else n_heads, d_head, dtype=torch.float64, device="cpu"
    )
    if b_v is not None:
        const = const + b_v
    if w_v is not None:
        for layer in range(n_layers):
            ln1 = getattr(model.blocks[layer], "ln1", None)
            if ln1 is not None:
                ln_bias = frozen_norm(ln1, w_v.shape[2]).bias
                const[layer] += torch.einsum("d,hdk->hk", ln_bias, w_v[layer])
    if const.shape[1] != n_heads:
        const = const.repeat_interleave(n_heads // const.shape[1], dim=1)
    return const
