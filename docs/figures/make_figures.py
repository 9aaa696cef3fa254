"""The documentation's figures, drawn from measurements on the shipped model interptest-tiny.

    PYTHONPATH=. python docs/figures/make_figures.py      # from the repository root; writes docs/figures/*.png

Deterministic: the model, the prompts and every measurement are fixed (no sampling), one torch thread,
and matplotlib's Agg backend with the PNG metadata that carries a date left out. Each figure draws what
a page of the documentation states in numbers, with interptest's public API (the values the claims judge).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import interptest  # noqa: E402

HERE = Path(__file__).resolve().parent
CLEAN, CORRUPT = "Her name was Alex Hart. When Alex", "Her name was Alex Cole. When Alex"
EXPECT = " Hart"
# behaviors/induction.yaml's induction-circuit: two people, the first names swapped in the corruption
TWO_PEOPLE = "Their names were Iris Jones and James Dixon. When James"
TWO_PEOPLE_CORRUPT = "Their names were James Jones and Iris Dixon. When James"


def save(fig, name: str) -> None:
    fig.tight_layout()
    fig.savefig(HERE / name, dpi=110, metadata={"Software": None})
    plt.close(fig)
    print("wrote", HERE / name)


def localization_maps(model) -> None:
    """The resid_pre and per-head patching maps of the tutorial's alex-hart behavior (claims/localization.md)."""
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 2.9), gridspec_kw={"width_ratios": [9, 4]})
    for ax, component in zip(axes, ("resid_pre", "heads")):
        pm = interptest.patch_sweep(model, CLEAN, CORRUPT, component=component, expect=EXPECT)
        pm.plot(ax=ax)
        for (layer, column), value in _cells(pm.values):
            ax.text(column, layer, f"{value:.2f}", ha="center", va="center", fontsize=7)
    save(fig, "localization-map.png")


def _cells(values):
    for layer, column in itertools.product(range(values.shape[0]), range(values.shape[1])):
        yield (layer, column), float(values[layer, column])


def control_histogram(model) -> None:
    """``heads[0.2, 1.0, 1.3] together recovers beats random at 0.95`` against every other set of three
    heads on the two-people prompt (claims/circuits.md, "Negative controls"): 0.99 sounds like a circuit,
    but it is not above the others' 0.95-quantile."""
    heads = [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    claimed = ((0, 2), (1, 0), (1, 3))

    def together(nodes) -> float:
        text = ", ".join(f"{l}.{h}" for l, h in nodes)
        claim = interptest.measure(
            model, f"heads[{text}] together recovers >= 0.9", TWO_PEOPLE, corrupt=TWO_PEOPLE_CORRUPT
        )
        return claim["value"]

    value = together(claimed)
    others = [together(s) for s in itertools.combinations(heads, 3) if s != claimed]
    quantile = float(torch.tensor(others).quantile(0.95))
    beaten = sum(v < value for v in others) / len(others)
    print(f"control: value {value:.3f}, {len(others)} other sets, 0.95-quantile {quantile:.3f}, beats {beaten:.0%}")
    fig, ax = plt.subplots(figsize=(6.4, 3.0))
    ax.hist(others, bins=22, range=(-0.05, 1.05), color="#9bb7d4", edgecolor="#4a6f94")
    ax.axvline(
        quantile, color="#444444", linestyle="--", label=f"0.95-quantile of the {len(others)} others: {quantile:.2f}"
    )
    ax.axvline(value, color="#c0392b", linewidth=2, label=f"heads[0.2, 1.0, 1.3]: {value:.2f}")
    ax.set_xlabel("heads[…] together recovers, two-people induction prompt")
    ax.set_ylabel("sets of three heads")
    ax.set_title(f"beats random at 0.95? no: it beats {beaten:.0%} of the other sets")
    ax.legend(loc="upper left", fontsize=8)
    save(fig, "control-histogram.png")


def attention_patterns(model) -> None:
    """The attention patterns of the previous-token head 0.2 and the induction head 1.0 (claims/attention.md)."""
    tokens = model.to_tokens(CLEAN)
    labels = [model.tokenizer.decode([int(t)]) for t in tokens[0]]
    labels = ["BOS" if i == 0 else repr(text)[1:-1] for i, text in enumerate(labels)]
    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens)
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 4.0))
    for ax, (layer, head), what in zip(axes, ((0, 2), (1, 0)), ("previous token", "induction")):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0, head].float().cpu()
        image = ax.imshow(pattern.numpy(), cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_xlabel("key")
        ax.set_ylabel("query")
        ax.set_title(f"head {layer}.{head} ({what})")
    fig.colorbar(image, ax=axes, shrink=0.8, label="attention probability")
    fig.savefig(HERE / "attention-patterns.png", dpi=110, metadata={"Software": None}, bbox_inches="tight")
    plt.close(fig)
    print("wrote", HERE / "attention-patterns.png")


def direct_effects(model) -> None:
    """The direct effect of every head and MLP as a fraction of the logit difference (claims/direct-effects.md)."""
    effects = interptest.direct_effects(model, CLEAN, corrupt=CORRUPT, relative=True)
    names = [f"head {l}.{h}" for l, h in effects["heads"]] + [f"mlp_out[{l}]" for l in effects["mlp_out"]]
    values = list(effects["heads"].values()) + list(effects["mlp_out"].values())
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    colors = ["#4a6f94" if v >= 0 else "#c0392b" for v in values]
    ax.barh(range(len(values)), values, color=colors)
    ax.set_yticks(range(len(values)), names, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="#444444", linewidth=0.8)
    ax.set_xlabel("direct effect, fraction of logit_diff (' Hart' − ' Cole')")
    ax.set_title("direct(...) of logit_diff, every head and MLP")
    save(fig, "direct-effects.png")


def logit_lens(model) -> None:
    """The logit lens at the last position after each residual stream (claims/logit-lens.md)."""
    streams, ranks, probs = [], [], []
    for layer in range(model.cfg.n_layers):
        for residual in ("resid_pre", "resid_mid"):
            streams.append(f"{residual}[{layer}]")
            ranks.append(interptest.lens(model, CLEAN, "rank", residual=residual)[layer])
            probs.append(interptest.lens(model, CLEAN, "prob", residual=residual)[layer])
    last = model.cfg.n_layers - 1
    streams.append(f"resid_post[{last}]")
    ranks.append(interptest.lens(model, CLEAN, "rank", residual="resid_post")[last])
    probs.append(interptest.lens(model, CLEAN, "prob", residual="resid_post")[last])
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.4, 2.8))
    left.plot(range(len(streams)), ranks, marker="o", color="#4a6f94")
    left.set_yscale("log")
    left.invert_yaxis()
    left.set_ylabel("rank of ' Hart' (log)")
    right.bar(range(len(streams)), probs, color="#4a6f94")
    right.set_ylim(0, 1)
    right.set_ylabel("p(' Hart')")
    for ax in (left, right):
        ax.set_xticks(range(len(streams)), streams, rotation=30, fontsize=8)
    for x, (rank, prob) in enumerate(zip(ranks, probs)):
        left.annotate(f"{rank:.0f}", (x, rank), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
        right.annotate(f"{prob:.2f}", (x, prob), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=8)
    fig.suptitle("logit lens at the last position of the clean prompt", fontsize=10)
    save(fig, "logit-lens.png")


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = interptest.load_model("interptest-tiny")
    localization_maps(model)
    control_histogram(model)
    attention_patterns(model)
    direct_effects(model)
    logit_lens(model)


if __name__ == "__main__":
    main()
