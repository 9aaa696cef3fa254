"""Measure the behaviors of ``interptest-tiny`` (or any checkpoint trained by :mod:`interptest.zoo.train`).

    TQDM_DISABLE=1 python -m interptest.zoo.evaluate [DIR] [--json OUT.json] [--card]

``DIR`` defaults to the shipped checkpoint.  ``--card`` rewrites the measured-numbers section of
``DIR/MODEL_CARD.md``.  Everything is deterministic (fixed seeds; held-out combinations as defined in
:mod:`interptest.zoo.corpus`).

Measured:
* top-1 accuracy and mean probability of the correct next token on held-out prompts for name copying
  (one and two people), IOI and factual recall, plus the exact prompts the shipped behaviors suite uses;
* induction: ``transformer_lens.head_detector.detect_head(model, seq, "induction_head")`` on sequences of
  random whole-vocabulary tokens repeated once, and the loss on the repeated half;
* residual-stream patching maps (``transformer_lens.patching.get_act_patch_resid_pre``), clean ->
  corrupted, normalized logit difference, mean over held-out prompts, layer x position.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

from interptest.model import load_model
from interptest.zoo import tiny_model_dir
from interptest.zoo.corpus import (
    CONNECTORS,
    INTROS_ONE,
    INTROS_TWO,
    VERB_PHRASES,
    facts,
    induction_pair_held_out,
    ioi_pair_held_out,
    lexicon,
    person_pool,
)
from interptest.zoo.ioi_corpus import (
    HELD_OUT_TEMPLATES,
    TRAIN_TEMPLATES,
    held_out_ioi_names,
    ioi_sentence,
    train_ioi_names,
)

SHIPPED_PROMPTS = {
    "induction": ("Her name was Alex Hart. When Alex", " Hart"),
    "induction_two": ("Their names were Iris Jones and James Dixon. When James", " Dixon"),
    "ioi": ("When Mary and John went to the store, John gave a drink to", " Mary"),
    "facts": ("The capital of France is", " Paris"),
}

THRESHOLD_ACC = 0.98
THRESHOLD_PROB = 0.9
THRESHOLD_INDUCTION_SCORE = 0.3
THRESHOLD_REPEAT_LOSS = 0.5


# ------------------------------------------------------------------ held-out prompt sets
# Each item: (clean prompt, clean answer, corrupted prompt, corrupted answer).  Clean and corrupted
# prompts have the same number of tokens (all lexicon words are single tokens).


def _held_out_person(rng: random.Random, used: set[str]) -> tuple[str, str]:
    first, last, pool = lexicon("names"), lexicon("surnames"), person_pool()
    while True:
        if rng.random() < 0.5:
            a, b = rng.choice(first), rng.choice(last)
        else:
            a, b = rng.choice(pool), rng.choice(pool)
        if a != b and a not in used and b not in used and induction_pair_held_out(a, b):
            used.update((a, b))
            return a, b


def _other_name(rng: random.Random, used: set[str]) -> str:
    pool = person_pool()
    while True:
        c = rng.choice(pool)
        if c not in used:
            return c


def induction_prompts(n: int, seed: int = 1, fixed_template: bool = False) -> list[tuple[str, str, str, str]]:
    """ "Her name was A B. When A" -> " B" with (A, B) a held-out pair; corrupted: surname B -> C."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        used: set[str] = set()
        a, b = _held_out_person(rng, used)
        c = _other_name(rng, used)
        intro = "Her name was" if fixed_template else rng.choice(INTROS_ONE)
        conn = "When" if fixed_template else rng.choice(CONNECTORS)
        out.append((f"{intro} {a} {b}. {conn} {a}", f" {b}", f"{intro} {a} {c}. {conn} {a}", f" {c}"))
    return out


def induction_two_prompts(n: int, seed: int = 2, fixed_template: bool = False) -> list[tuple[str, str, str, str]]:
    """ "Their names were A B and C D. When C" -> " D" (either person asked); corrupted: that surname."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        used: set[str] = set()
        p, q = _held_out_person(rng, used), _held_out_person(rng, used)
        e = _other_name(rng, used)
        ask_second = rng.random() < 0.5
        intro = "Their names were" if fixed_template else rng.choice(INTROS_TWO)
        conn = "When" if fixed_template else rng.choice(CONNECTORS)
        asked = q if ask_second else p
        clean = f"{intro} {p[0]} {p[1]} and {q[0]} {q[1]}. {conn} {asked[0]}"
        if ask_second:
            corrupt = f"{intro} {p[0]} {p[1]} and {q[0]} {e}. {conn} {asked[0]}"
        else:
            corrupt = f"{intro} {p[0]} {e} and {q[0]} {q[1]}. {conn} {asked[0]}"
        out.append((clean, f" {asked[1]}", corrupt, f" {e}"))
    return out


def ioi_prompts(n: int, seed: int = 3, fixed_template: bool = False) -> list[tuple[str, str, str, str]]:
    """ "When A and B went to the P, B gave a O to" -> " A", {A, B} a held-out pair; corrupted: the
    repeated name swapped ("..., A gave ...", answer " B")."""
    rng = random.Random(seed)
    pool, places, objects = person_pool(), lexicon("places"), lexicon("objects")
    out: list[tuple[str, str, str, str]] = []
    while len(out) < n:
        a, b = rng.choice(pool), rng.choice(pool)
        if a == b or not ioi_pair_held_out(a, b):
            continue
        s, io = (b, a) if rng.random() < 0.5 else (a, b)
        place = "store" if fixed_template else rng.choice(places)
        obj = "drink" if fixed_template else rng.choice(objects)
        head = f"When {a} and {b} went to the {place},"
        out.append((f"{head} {s} gave a {obj} to", f" {io}", f"{head} {io} gave a {obj} to", f" {s}"))
    return out


def ioi_template_prompts(
    n: int, seed: int = 6, templates=HELD_OUT_TEMPLATES, names=None
) -> list[tuple[str, str, str, str]]:
    """interptest-ioi's IOI prompts: templates of ``ioi_corpus.IOI_TEMPLATES`` (default: the held-out ones),
    names from ``names`` (default: the names no training IOI sentence holds), ABBA and BABA alike; corrupted:
    the repeated name swapped (answer: the subject)."""
    rng = random.Random(seed)
    pool = list(names if names is not None else held_out_ioi_names())
    places, objects = lexicon("places"), lexicon("objects")
    templates = sorted(templates)
    out: list[tuple[str, str, str, str]] = []
    while len(out) < n:
        a, b = rng.sample(pool, 2)
        t, s = rng.choice(templates), rng.choice((a, b))
        place, obj = rng.choice(places), rng.choice(objects)
        clean, io = ioi_sentence(t, a, b, s, place, obj)
        corrupt, _ = ioi_sentence(t, a, b, io.strip(), place, obj)
        out.append((clean, io, corrupt, f" {s}"))
    return out


def logit_diffs(model, items) -> dict:
    """Mean and minimum logit difference (clean answer - corrupted answer) at the last clean position."""
    import torch

    diffs = []
    with torch.inference_mode():
        for clean, ans, _, foil in items:
            logits = model(model.to_tokens(clean))[0, -1].float()
            diffs.append(float(logits[_single_token(model, ans)] - logits[_single_token(model, foil)]))
    return {"mean_logit_diff": sum(diffs) / len(diffs), "min_logit_diff": min(diffs)}


def fact_prompts(context: bool = False, seed: int = 4) -> list[tuple[str, str, str, str]]:
    """ "The capital of X is" -> " Y" for every fact; corrupted: another country X' (answer its capital).
    With ``context``, prefixed by a name-copying sentence about a held-out name pair ("Her name was A B.
    When A B smiled. The capital of X is"), a combination never trained."""
    rng = random.Random(seed)
    fs = list(facts())
    out = []
    for i, (country, capital) in enumerate(fs):
        other_country, other_capital = fs[(i + 1 + rng.randrange(len(fs) - 1)) % len(fs)]
        prefix = ""
        if context:  # a complete name-copying sentence about a held-out pair, as in training documents
            a, b = _held_out_person(rng, set())
            prefix = f"{rng.choice(INTROS_ONE)} {a} {b}. {rng.choice(CONNECTORS)} {a} {b} {rng.choice(VERB_PHRASES)}. "
        out.append(
            (
                f"{prefix}The capital of {country} is",
                f" {capital}",
                f"{prefix}The capital of {other_country} is",
                f" {other_capital}",
            )
        )
    return out


# ------------------------------------------------------------------ measurements


def _single_token(model, text: str) -> int:
    ids = model.to_tokens(text, prepend_bos=False)[0]
    if len(ids) != 1:
        raise ValueError(f"{text!r} is not a single token")
    return int(ids[0])


def accuracy(model, items) -> dict:
    """Top-1 accuracy and mean probability of the clean answer at the last position (batched by length)."""
    import torch

    hits, probs = 0, []
    by_len: dict[int, list] = {}
    for clean, ans, _, _ in items:
        toks = model.to_tokens(clean)[0]
        by_len.setdefault(len(toks), []).append((toks, _single_token(model, ans)))
    with torch.inference_mode():
        for group in by_len.values():
            x = torch.stack([t for t, _ in group])
            logits = model(x)[:, -1, :].float()
            p = logits.softmax(-1)
            for j, (_, a) in enumerate(group):
                hits += int(int(logits[j].argmax()) == a)
                probs.append(float(p[j, a]))
    return {
        "n": len(items),
        "top1_acc": hits / len(items),
        "mean_prob": sum(probs) / len(probs),
        "min_prob": min(probs),
    }


def random_repeat_strings(model, n_seqs: int = 10, length: int = 20, seed: int = 5) -> list[str]:
    """Strings of ``length`` random whole-vocabulary tokens, repeated once, that re-tokenize exactly.

    Candidates are every non-special token whose text starts with a space and re-encodes to itself, so
    that concatenations tokenize back to the same ids (a repeated random-token sequence as text, the form
    ``detect_head`` needs)."""
    tok = model.tokenizer
    special = set(tok.all_special_ids)
    candidates = []
    for i in range(len(tok)):
        if i in special:
            continue
        s = tok.decode([i])
        if len(s) > 1 and s[0] == " " and not s[1].isspace() and tok.encode(s, add_special_tokens=False) == [i]:
            candidates.append(i)
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n_seqs:
        ids = [rng.choice(candidates) for _ in range(length)]
        text = tok.decode(ids)
        if tok.encode(text + text, add_special_tokens=False) == ids + ids:
            out.append(text + text)
    return out


def induction_metrics(model, n_seqs: int = 10, length: int = 20) -> dict:
    import torch
    from transformer_lens.head_detector import detect_head

    seqs = random_repeat_strings(model, n_seqs, length)
    with torch.inference_mode():
        scores = detect_head(model, seqs, "induction_head")
        losses, losses_all = [], []
        for s in seqs:
            toks = model.to_tokens(s)
            logp = model(toks)[0].float().log_softmax(-1)
            # position t predicts token t+1; the repeated half is tokens length+1 .. 2*length (BOS at 0).
            tgt = toks[0, 1:]
            nll = -logp[:-1].gather(-1, tgt[:, None])[:, 0]
            second = nll[length:]  # predictions of tokens length+1 .. 2*length
            losses_all.append(float(second.mean()))
            losses.append(float(second[1:].mean()))  # first repeated token is not predictable
    best = scores.flatten().argmax()
    n_heads = scores.shape[1]
    return {
        "n_seqs": n_seqs,
        "length": length,
        "ceiling": length / (2 * length + 1),
        "scores": [[round(float(v), 4) for v in row] for row in scores],
        "best_head": [int(best) // n_heads, int(best) % n_heads],
        "best_score": float(scores.max()),
        "repeat_half_loss": sum(losses) / len(losses),
        "repeat_half_loss_incl_first": sum(losses_all) / len(losses_all),
    }


def patching_map(model, items) -> dict:
    """Residual-stream patching (clean -> corrupted), normalized logit difference, layer x position."""
    import torch
    from transformer_lens.patching import get_act_patch_resid_pre

    clean = torch.cat([model.to_tokens(c) for c, _, _, _ in items])
    corrupt = torch.cat([model.to_tokens(c) for _, _, c, _ in items])
    if clean.shape != corrupt.shape:
        raise ValueError("clean and corrupted prompts must have the same token counts")
    right = torch.tensor([_single_token(model, a) for _, a, _, _ in items])
    wrong = torch.tensor([_single_token(model, b) for _, _, _, b in items])
    rows = torch.arange(len(items))

    def logit_diff(logits):
        last = logits[:, -1, :]
        return (last[rows, right] - last[rows, wrong]).mean()

    with torch.inference_mode():
        clean_logits, clean_cache = model.run_with_cache(clean)
        corrupt_logits = model(corrupt)
    ld_clean, ld_corrupt = float(logit_diff(clean_logits)), float(logit_diff(corrupt_logits))

    def metric(logits):
        return (logit_diff(logits) - ld_corrupt) / (ld_clean - ld_corrupt)

    with torch.inference_mode():
        result = get_act_patch_resid_pre(model, corrupt, clean_cache, metric)
    labels = model.to_str_tokens(items[0][0])
    return {
        "n_prompts": len(items),
        "example_clean": items[0][0],
        "example_corrupted": items[0][2],
        "logit_diff_clean": ld_clean,
        "logit_diff_corrupted": ld_corrupt,
        "positions": labels,
        "map": [[round(float(v), 3) for v in row] for row in result],
    }


def shipped_prompt_results(model, prompts: dict) -> dict:
    """Top-1 and probability of the answer on each exact prompt a shipped spec uses."""
    out = {}
    for k, (prompt, ans) in prompts.items():
        r = accuracy(model, [(prompt, ans, prompt, ans)])
        out[k] = {"prompt": prompt, "answer": ans, "top1": r["top1_acc"] == 1.0, "prob": r["mean_prob"]}
    return out


def evaluate(model, n: int = 200, n_patch: int = 24) -> dict:
    t0 = time.perf_counter()
    tasks = {
        "induction": induction_prompts(n),
        "induction_two": induction_two_prompts(n),
        "ioi": ioi_prompts(n),
        "facts": fact_prompts(context=False),
        "facts_in_context": fact_prompts(context=True),
    }
    res: dict = {"tasks": {k: accuracy(model, v) for k, v in tasks.items()}}
    res["shipped_prompts"] = shipped_prompt_results(model, SHIPPED_PROMPTS)
    res["induction_heads"] = induction_metrics(model)
    res["patching"] = {
        "induction": patching_map(model, induction_prompts(n_patch, seed=11, fixed_template=True)),
        "ioi": patching_map(model, ioi_prompts(n_patch, seed=13, fixed_template=True)),
        "facts": patching_map(model, fact_prompts(context=False, seed=14)[: max(n_patch, 20)]),
    }
    res["eval_seconds"] = round(time.perf_counter() - t0, 1)
    return res


IOI_SHIPPED_PROMPTS = {
    "ioi": ("When Mary and John went to the store, John gave a drink to", " Mary"),
    "induction": ("Her name was Alex Hart. When Alex", " Hart"),
}


def evaluate_ioi(model, n: int = 200, n_patch: int = 24) -> dict:
    """interptest-ioi: IOI on held-out templates x held-out names (the gate), on trained templates x held-out
    names and on held-out templates x trained names, name copying, induction heads, a patching map."""
    t0 = time.perf_counter()
    tasks = {
        "ioi_held_out_templates_and_names": ioi_template_prompts(n),
        "ioi_trained_templates_held_out_names": ioi_template_prompts(n, seed=7, templates=TRAIN_TEMPLATES),
        "ioi_held_out_templates_trained_names": ioi_template_prompts(n, seed=8, names=train_ioi_names()),
        "induction": induction_prompts(n),
        "induction_two": induction_two_prompts(n),
    }
    res: dict = {"tasks": {}}
    for k, items in tasks.items():
        res["tasks"][k] = accuracy(model, items)
        if k.startswith("ioi"):
            res["tasks"][k].update(logit_diffs(model, items))
    res["shipped_prompts"] = shipped_prompt_results(model, IOI_SHIPPED_PROMPTS)
    res["induction_heads"] = induction_metrics(model)
    fixed = [it for it in ioi_template_prompts(400, seed=13) if it[0].startswith("When ") and " went to " in it[0]]
    res["patching"] = {"ioi": patching_map(model, fixed[:n_patch])}
    res["eval_seconds"] = round(time.perf_counter() - t0, 1)
    return res


THRESHOLD_IOI_HELD_OUT = 0.95  # issue 31: held-out accuracy on IOI prompts of unseen names and templates


def check(res: dict) -> list[str]:
    """Failed thresholds, as readable strings (empty when everything holds)."""
    bad = []
    for k, r in res["tasks"].items():
        if k.startswith("ioi_"):  # interptest-ioi: one gate, on accuracy (its probabilities are reported)
            if k == "ioi_held_out_templates_and_names" and r["top1_acc"] < THRESHOLD_IOI_HELD_OUT:
                bad.append(f"{k}: acc {r['top1_acc']:.3f}")
        elif r["top1_acc"] < THRESHOLD_ACC or r["mean_prob"] < THRESHOLD_PROB:
            bad.append(f"{k}: acc {r['top1_acc']:.3f} prob {r['mean_prob']:.3f}")
    for k, r in res["shipped_prompts"].items():
        if not r["top1"] or r["prob"] < THRESHOLD_PROB:
            bad.append(f"shipped prompt {k}: top1 {r['top1']} prob {r['prob']:.3f}")
    ih = res["induction_heads"]
    if ih["best_score"] < THRESHOLD_INDUCTION_SCORE:
        bad.append(f"induction head score {ih['best_score']:.3f}")
    if ih["repeat_half_loss"] >= THRESHOLD_REPEAT_LOSS:
        bad.append(f"repeated-half loss {ih['repeat_half_loss']:.3f}")
    return bad


# ------------------------------------------------------------------ model card

CARD_BEGIN = "<!-- measured:begin (written by python -m interptest.zoo.evaluate --card) -->"
CARD_END = "<!-- measured:end -->"


def _map_table(p: dict) -> str:
    pos = [t.replace("|", "\\|").replace("\n", "\\n") for t in p["positions"]]
    head = "| layer | " + " | ".join(f"`{t}`" for t in pos) + " |"
    sep = "|---|" + "---|" * len(pos)
    rows = [f"| {i} | " + " | ".join(f"{v:.2f}" for v in row) + " |" for i, row in enumerate(p["map"])]
    return "\n".join([head, sep, *rows])


def card_section(res: dict, model_dir: Path) -> str:
    lines = [
        CARD_BEGIN,
        "",
        "### Behaviors (held-out prompts, top-1 over the whole vocabulary)",
        "",
        "| task | prompts | top-1 accuracy | mean p(correct) | min p(correct) |",
        "|---|---|---|---|---|",
    ]
    for k, r in res["tasks"].items():
        lines.append(f"| {k} | {r['n']} | {r['top1_acc']:.3f} | {r['mean_prob']:.3f} | {r['min_prob']:.3f} |")
    lines += [
        "",
        "Exact prompts of the shipped behaviors suite:",
        "",
        "| prompt | answer | top-1 | p |",
        "|---|---|---|---|",
    ]
    for r in res["shipped_prompts"].values():
        lines.append(f"| `{r['prompt']}` | `{r['answer']}` | {'yes' if r['top1'] else 'no'} | {r['prob']:.3f} |")
    ih = res["induction_heads"]
    lines += [
        "",
        "### Induction heads",
        "",
        f'`detect_head(model, seqs, "induction_head")` over {ih["n_seqs"]} sequences of {ih["length"]} '
        f"random whole-vocabulary tokens repeated once (ceiling {ih['ceiling']:.3f}):",
        "",
        "| layer | " + " | ".join(f"head {h}" for h in range(len(ih["scores"][0]))) + " |",
        "|---|" + "---|" * len(ih["scores"][0]),
    ]
    for i, row in enumerate(ih["scores"]):
        lines.append(f"| {i} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    lines += [
        "",
        f"Best: L{ih['best_head'][0]}H{ih['best_head'][1]} = {ih['best_score']:.3f}. "
        f"Loss on the repeated half: {ih['repeat_half_loss']:.3f} nats (its first token, which no "
        f"mechanism can predict, excluded; {ih['repeat_half_loss_incl_first']:.3f} including it).",
        "",
    ]
    lines += [
        "### Mechanisms: residual-stream patching maps",
        "",
        "`transformer_lens.patching.get_act_patch_resid_pre`, clean activations patched into the "
        "corrupted run, metric = (LD_patched - LD_corrupted) / (LD_clean - LD_corrupted) with LD the "
        "logit difference correct - corrupted answer, averaged over the prompts (rows: layer of "
        "`resid_pre`; columns: positions of the first prompt).",
        "",
    ]
    corr = {
        "induction": "change the surname (`Her name was A B. When A` -> `Her name was A C. When A`)",
        "ioi": "swap the repeated name (`..., B gave a drink to` -> `..., A gave a drink to`)",
        "facts": "change the country (`The capital of X is` -> `The capital of X' is`)",
    }
    for k, p in res["patching"].items():
        which = "prompts (every fact is trained; see above)" if k == "facts" else "held-out prompts"
        lines += [
            f"**{k}** - corruption: {corr[k]}; {p['n_prompts']} {which}; e.g. "
            f"`{p['example_clean']}` -> `{p['example_corrupted']}`; "
            f"LD clean {p['logit_diff_clean']:.2f}, corrupted {p['logit_diff_corrupted']:.2f}.",
            "",
            _map_table(p),
            "",
        ]
    lines.append(CARD_END)
    return "\n".join(lines)


def write_card(res: dict, model_dir: Path) -> None:
    path = model_dir / "MODEL_CARD.md"
    section = card_section(res, model_dir)
    if path.exists():
        text = path.read_text()
        if CARD_BEGIN in text and CARD_END in text:
            text = text[: text.index(CARD_BEGIN)] + section + text[text.index(CARD_END) + len(CARD_END) :]
        else:
            text = text.rstrip() + "\n\n" + section + "\n"
    else:
        text = "# interptest-tiny\n\n" + section + "\n"
    path.write_text(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m interptest.zoo.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("model_dir", nargs="?", default=None, help="checkpoint directory (default: shipped)")
    p.add_argument("--json", default=None, help="write all numbers to this JSON file")
    p.add_argument("--card", action="store_true", help="rewrite the numbers section of MODEL_CARD.md")
    p.add_argument("-n", type=int, default=200, help="held-out prompts per task")
    p.add_argument(
        "--suite",
        choices=("tiny", "ioi"),
        default=None,
        help="which model's measurements (default: the corpus named in DIR/training_info.json)",
    )
    args = p.parse_args(argv)
    model_dir = Path(args.model_dir) if args.model_dir else tiny_model_dir()
    suite = args.suite
    if suite is None:
        info = model_dir / "training_info.json"
        suite = json.loads(info.read_text())["args"].get("corpus", "tiny") if info.is_file() else "tiny"
    model = load_model(str(model_dir), device="cpu")
    res = (evaluate_ioi if suite == "ioi" else evaluate)(model, n=args.n)
    bad = check(res)
    summary = {k: (round(r["top1_acc"], 3), round(r["mean_prob"], 3)) for k, r in res["tasks"].items()}
    print(
        json.dumps(
            {
                "tasks": summary,
                "logit_diffs": {
                    k: round(r["mean_logit_diff"], 2) for k, r in res["tasks"].items() if "mean_logit_diff" in r
                },
                "shipped": {k: round(v["prob"], 3) for k, v in res["shipped_prompts"].items()},
                "induction_best": res["induction_heads"]["best_score"],
                "best_head": res["induction_heads"]["best_head"],
                "repeat_loss": res["induction_heads"]["repeat_half_loss"],
                "eval_seconds": res["eval_seconds"],
            },
            indent=1,
        )
    )
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    if args.card:
        write_card(res, model_dir)
    if bad:
        print("FAILED thresholds: " + "; ".join(bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
