"""Binding a spec to a model: every check that needs the model but no forward pass, for every sample.

A single prompt is a family of one sample. :func:`bind_behavior` draws the samples and checks them
(token counts, unknown words, producible answers, single tokens, lexicons, reference prompts), then
binds every claim (positions, layers, heads) through :func:`interptest.claims.bind_all`. Its errors
are :class:`SpecError`, so the plugin reports them at collection. The result, a
:class:`BoundBehavior`, is what :mod:`interptest.running` runs.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, NoReturn

from interptest import components, families, graphs
from interptest.claims import (
    BindContext,
    ClaimBindError,
    ClaimBindIndexError,
    bind_all,
    direct,
    pointing,
    position_source,
    resolve_positions,
)
from interptest.errors import SpecError, combined
from interptest.saes import SAEError
from interptest.spec import BehaviorSpec, Family, check_sample_count


@dataclass
class BoundBehavior:
    """A behavior resolved against one model: its samples (one for a single prompt), their token ids,
    and every claim bound; ready to run."""

    spec: BehaviorSpec
    model: Any
    model_name: str
    seed: int
    samples: list  # families.Sample, one per sample
    clean_ids: Any  # LongTensor [S, n], CPU
    corrupt_ids: Any  # LongTensor [S, n] (a noise corruption: equal to clean_ids), or None
    noise_positions: list | None  # positions whose embeddings get noise
    tokens: list[str]  # the first sample's tokens, for maps and messages
    corrupt_tokens: list[str] | None
    expect_ids: list[list[int]]  # every token of each sample's expected completion
    foil_ids: list[int] | None  # None: the top-1 prediction on each corrupted prompt, found at run time
    bound_claims: list  # one per claim of the spec, in order
    options: dict = field(default_factory=dict)  # run settings claim kinds read, e.g. repeat_length
    reference_ids: Any = None  # LongTensor [R, n] of the 'reference' prompts (CPU), or None
    notes: list = field(default_factory=list)  # what binding changed, e.g. dropped lexicon entries
    sample_tokens: list = field(default_factory=list)  # every sample's tokens (positions bind on each)
    variables: list = field(default_factory=list)  # every sample's template variables, as token texts
    saes: dict = field(default_factory=dict)  # SAE name -> interptest.saes.SAE, those the claims name

    def position_source(self, p: int) -> str:
        """Position ``p`` as a claim writes it so that it binds to ``p`` on every sample (a family's
        template variable, e.g. ``{b}#2``, rather than one sample's token)."""
        return position_source(p, self.sample_tokens or [self.tokens], self.variables or None)

    @property
    def n_samples(self) -> int:
        return len(self.samples)


class SpecTokenizer:
    """The model's tokenizer as binding needs it; every message names the spec key."""

    def __init__(self, spec: BehaviorSpec, model):
        self.spec, self.model = spec, model

    def encode(self, text: str) -> list[int]:
        return self.model.to_tokens(text, prepend_bos=False, truncate=False)[0].tolist()

    def decode(self, ids) -> list[str]:
        return [self.model.tokenizer.decode([i]) for i in ids]

    def unknown_words(self, text: str) -> list[str]:
        unk = getattr(self.model.tokenizer, "unk_token_id", None)
        if unk is None:
            return []
        return [word for word in text.split() if unk in self.encode(" " + word)]

    def prompt(self, text: str, key: str):
        """[1, n] ids (BOS included) of a prompt the model knows every word of and that fits its context."""
        unknown = self.unknown_words(text)
        if unknown:
            raise self.spec.error(
                f"the model's tokenizer maps {', '.join(map(repr, unknown))} to its unknown token", key
            )
        ids = self.model.to_tokens(text, truncate=False)  # TL truncates to n_ctx silently by default
        n_ctx = self.model.cfg.n_ctx
        if ids.shape[-1] > n_ctx:
            raise self.spec.error(
                f"the prompt is {ids.shape[-1]} tokens long but the model's context holds {n_ctx}", key
            )
        return ids.cpu()

    def producible(self, text: str, key: str) -> list[int]:
        """The ids of a completion the model can produce exactly."""
        try:
            ids = self.encode(text)
        except Exception as error:  # the tokenizer's own complaint, e.g. about unencodable characters
            raise self.spec.error(f"{text!r} cannot be encoded by the model's tokenizer ({error})", key) from None
        unknown = self.unknown_words(text)
        if unknown:
            raise self.spec.error(
                f"the model's tokenizer maps {', '.join(map(repr, unknown))} to its unknown "
                "token; use words the model knows",
                key,
            )
        if not ids or self.model.tokenizer.decode(ids) != text:
            raise self.spec.error(
                f"{text!r} cannot be produced by the model's tokenizer (it encodes to "
                f"{self.decode(ids)}){self.space_hint(text, key)}",
                key,
            )
        return ids

    def single(self, text: str, what: str) -> int:
        """The id of a text that must be exactly one token; ``ClaimBindError`` otherwise."""
        ids = self.encode(text)
        if len(ids) != 1 or self.model.tokenizer.decode(ids) != text or self.unknown_words(text):
            raise ClaimBindError(
                f"{what} needs a single token the model can produce; {text!r} encodes to "
                f"{self.decode(ids)}{self.space_hint(text, None, single=True)}"
            )
        return ids[0]

    def space_hint(self, text: str, key: str | None, single: bool = False) -> str:
        """When ``text`` fails but the same text with a leading space would work: say so, and (for a spec
        key) that YAML drops the leading space of an unquoted value, so it must be quoted."""
        spaced = " " + text
        if not text or text.startswith(" "):
            return ""
        try:
            ids = self.encode(spaced)
        except Exception:
            return ""
        if self.model.tokenizer.decode(ids) != spaced or (single and len(ids) != 1) or self.unknown_words(spaced):
            return ""
        if key is None:
            return f"; {spaced!r}, with a leading space, is one token: did you mean {spaced!r}?"
        return (
            f"; {spaced!r}, with a leading space, would work: YAML drops the leading space of an unquoted "
            f'value, so quote it with the space: {key}: "{spaced}"'
        )


def _check_lexicons(spec: BehaviorSpec, tok: SpecTokenizer) -> tuple[BehaviorSpec, list[str]]:
    """Every value of every variable must be one token where the template puts it. With
    ``single_token: drop`` the rows holding such a value are dropped instead (the returned spec, and a
    note naming them); otherwise every offending entry is a collection error."""
    family = families.family_of(spec)
    bad: dict[str, list[str]] = {}
    kept_units, dropped = [], []
    for names, rows in family.units:
        kept = []
        for row in rows:
            problems = []
            for var, value in zip(names, row):
                ids = tok.encode(families.variable_token_texts(spec, {var: value})[var])
                if len(ids) != 1:
                    problems.append(f"{value!r} → {tok.decode(ids)}")
                    bad.setdefault(var, []).append(problems[-1])
            if problems:
                dropped.extend(problems)
            else:
                kept.append(row)
        kept_units.append((names, tuple(kept)))
    if not bad:
        return spec, []
    if family.single_token != "drop":
        var, entries = next(iter(bad.items()))
        source = family.sources[var]
        where = f"lexicon {source}" if source.startswith("@") else "the list"
        # Every offending entry: this list is how a user checks a lexicon against another model.
        raise spec.error(
            f"{len(entries)} value(s) of {{{var}}} in {where} are not single tokens for this model: "
            f"{', '.join(entries)} (or set 'single_token: drop' to leave them out)",
            f"vars.{var}",
        )
    for names, rows in kept_units:
        if not rows:
            raise spec.error(
                f"every value of {', '.join(names)} is dropped: none is a single token for this model "
                f"({', '.join(dropped)})",
                "single_token",
            )
    smaller = Family.from_units(kept_units, family.samples, family.sources, family.single_token)

    def error(message, key) -> NoReturn:
        raise spec.error(message, key)

    check_sample_count(smaller, error, f" after dropping {len(dropped)} value(s) that are not single tokens")
    note = f"dropped {len(dropped)} value(s) that are not single tokens for this model: {', '.join(dropped)}"
    return dataclasses.replace(spec, family=smaller), [note]


def _swap_tokens(spec: BehaviorSpec, tok: SpecTokenizer, ids, replace):
    mapping = {}
    for a, b in replace:
        ia, ib = tok.encode(a), tok.encode(b)
        if len(ia) != 1 or len(ib) != 1:
            raise spec.error(
                f"replace needs single tokens: {a!r} → {tok.decode(ia)}, {b!r} → {tok.decode(ib)}", "corrupt.replace"
            )
        mapping[ia[0]], mapping[ib[0]] = ib[0], ia[0]
    out = ids.clone()
    for row in range(ids.shape[0]):
        for p in range(ids.shape[1]):
            out[row, p] = mapping.get(int(ids[row, p]), int(ids[row, p]))
    if bool((out == ids).all(dim=1).any()):
        raise spec.error(
            f"the replacement changes nothing in the prompt: none of "
            f"{', '.join(repr(a) for a, _ in replace)} occurs as a token",
            "corrupt.replace",
        )
    return out


def _sample_tensors(spec: BehaviorSpec, tok: SpecTokenizer, samples) -> tuple:
    """clean ids [S, n], corrupted ids [S, n] or None, expect ids per sample, foil id per sample or None."""
    import torch

    model = tok.model
    key = "template" if spec.family else "prompt"
    clean = [tok.prompt(s.prompt, key)[0] for s in samples]
    if len({len(c) for c in clean}) != 1:
        a, b = samples[0], next(s for s, c in zip(samples, clean) if len(c) != len(clean[0]))
        raise spec.error(
            f"samples tokenize to different lengths: {model.to_str_tokens(a.prompt)} vs "
            f"{model.to_str_tokens(b.prompt)}",
            key,
        )
    clean_ids = torch.stack(clean)
    corruption = spec.corruption
    corrupt_ids = None
    if corruption is not None and corruption.kind == "replace":
        corrupt_ids = _swap_tokens(spec, tok, clean_ids, corruption.replace)
    elif corruption is not None and corruption.kind == "noise":
        corrupt_ids = clean_ids.clone()
    elif corruption is not None:
        corrupt = [tok.prompt(s.corrupt, "corrupt")[0] for s in samples]
        for s, c, k in zip(samples, clean, corrupt):
            if len(k) != len(c):
                raise spec.error(
                    f"the clean and corrupted prompts tokenize to different lengths ({len(c)} vs "
                    f"{len(k)}), so positions cannot be matched: prompt {model.to_str_tokens(s.prompt)} "
                    f"vs corrupt {model.to_str_tokens(s.corrupt)}",
                    "corrupt",
                )
        corrupt_ids = torch.stack(corrupt)
    expect_ids = [tok.producible(s.expect, "expect") for s in samples]
    foil_ids = None
    if spec.foil is not None:
        foil_ids = []
        for s, expect in zip(samples, expect_ids):
            ids = tok.producible(s.foil, "foil")
            if len(ids) != 1:
                raise spec.error(
                    f"the foil must be a single token; {s.foil!r} is {len(ids)} tokens "
                    f"{tok.decode(ids)}{tok.space_hint(s.foil, 'foil', single=True)}",
                    "foil",
                )
            if ids[0] == expect[0]:
                raise spec.error(
                    f"'expect' {s.expect!r} and 'foil' {s.foil!r} start with the same token "
                    f"{tok.decode(ids)[0]!r}: the logit difference would always be 0",
                    "foil",
                )
            foil_ids.append(ids[0])
    return clean_ids, corrupt_ids, expect_ids, foil_ids


def bind_samples(
    spec: BehaviorSpec, model, samples: list, model_name: str = "", seed: int = 0, options: dict | None = None
) -> BoundBehavior:
    """Bind ``samples`` of ``spec`` to ``model``; raises :class:`SpecError` for anything the model cannot do."""
    tok = SpecTokenizer(spec, model)
    clean_ids, corrupt_ids, expect_ids, foil_ids = _sample_tensors(spec, tok, samples)
    tokens = [list(model.to_str_tokens(s.prompt)) for s in samples]
    variables = [families.variable_token_texts(spec, s.values) for s in samples]
    noise_positions = None
    if spec.corruption is not None and spec.corruption.kind == "noise":
        try:
            noise_positions = sorted(
                {p for sel in spec.corruption.positions for p in resolve_positions(sel, tokens[0], variables[0])}
            )
        except ClaimBindError as problem:
            raise spec.error(f"noise position: {problem}", "corrupt.noise") from None
    corrupt_tokens = None
    if corrupt_ids is not None and spec.corruption is not None and spec.corruption.kind != "noise":
        corrupt_tokens = tok.decode(corrupt_ids[0].tolist())

    def single_token_ids(text: str, what: str) -> list[int]:
        return [tok.single(text.format(**s.values) if spec.family else text, what) for s in samples]

    context = BindContext(
        [s.prompt for s in samples],
        tokens,
        variables,
        int(model.cfg.n_layers),
        int(model.cfg.n_heads),
        components.available(getattr(model, "hook_dict", {})),
        model_name,
        single_token_ids,
        n_kv_heads=getattr(model.cfg, "n_key_value_heads", None),
        architecture=direct.architecture(model),
        unsupported=_unsupported(model),
        spec_dir=os.path.dirname(os.path.abspath(spec.path)) if spec.path and not spec.path.startswith("<") else "",
        parallel=bool(getattr(model.cfg, "parallel_attn_mlp", False)),
        saes=load_saes(spec, model),
    )
    try:
        bound_claims = bind_all(list(spec.claims), context)
    except ClaimBindIndexError as error:  # each error goes to its claim's line, pointing into its text
        raise combined(
            [
                spec.error(
                    f"claim {spec.claims[e.index].text!r}: {e}\n{pointing(spec.claims[e.index].text, e.at)}",
                    claim_index=e.index,
                )
                for e in error.errors
            ]
        ) from None
    _check_random_sets(spec, options or {})
    _check_repeat_length(spec, model, options or {})
    return BoundBehavior(
        spec,
        model,
        model_name,
        seed,
        samples,
        clean_ids,
        corrupt_ids,
        noise_positions,
        tokens[0],
        corrupt_tokens,
        expect_ids,
        foil_ids,
        bound_claims,
        dict(options or {}),
        _reference_ids(spec, tok, clean_ids),
        sample_tokens=tokens,
        variables=variables,
        saes=context.saes,
    )


def _check_random_sets(spec: BehaviorSpec, options: dict) -> None:
    """``beats random at q`` needs at least 1/(1-q) random sets (20 at 0.95): with fewer, the q-quantile
    of their values is little more than their maximum, and the control says nothing at level q."""
    count = options.get("random_sets")
    if not count:
        return
    for index, claim in enumerate(spec.claims):
        control = getattr(claim, "random", None)
        if control is None or control.quantile >= 1:
            continue
        needed = math.ceil(1 / (1 - control.quantile) - 1e-9)
        if count < needed:
            raise spec.error(
                f"claim {claim.text!r}: --interp-random-sets {count} is too few for 'beats random at "
                f"{control.quantile:g}': a {control.quantile:g}-quantile needs at least {needed} random sets "
                f"(1/(1 - {control.quantile:g})); raise --interp-random-sets or lower the quantile",
                claim_index=index,
            )


def _check_repeat_length(spec: BehaviorSpec, model, options: dict) -> None:
    """``on random_repeat`` reads BOS + r + r: 2 × --interp-repeat-length + 1 tokens must fit the context."""
    length, n_ctx = options.get("repeat_length"), getattr(model.cfg, "n_ctx", None)
    if not length or not n_ctx or 2 * length + 1 <= n_ctx:
        return
    for index, claim in enumerate(spec.claims):
        if getattr(claim, "on_random_repeat", False):
            raise spec.error(
                f"claim {claim.text!r}: --interp-repeat-length {length} is too long for this model: 'on random_repeat' "
                f"reads BOS + the sequence twice ({2 * length + 1} tokens) and the model's context holds {n_ctx}; "
                f"use --interp-repeat-length {(n_ctx - 1) // 2} or less",
                claim_index=index,
            )


# The width of an activation an SAE may read, by the end of its TransformerLens hook name.
SAE_HOOK_WIDTHS = {
    "hook_resid_pre": "d_model",
    "hook_resid_mid": "d_model",
    "hook_resid_post": "d_model",
    "hook_attn_out": "d_model",
    "hook_mlp_out": "d_model",
    "mlp.hook_pre": "d_mlp",
    "mlp.hook_post": "d_mlp",
}


def load_saes(spec: BehaviorSpec, model, every: bool = False) -> dict:
    """The SAEs the behavior's claims name (``every``: all it declares), loaded and checked against the model:
    the hook must exist and be an activation of width d_in. Errors point at the SAE's entry under 'saes'."""
    used = {name for claim in spec.claims if (name := getattr(claim, "sae", None))}
    if every:
        used = {source.name for source in spec.saes}
    loaded = {}
    hooks = getattr(model, "hook_dict", {})
    for source in spec.saes:
        if source.name not in used:
            continue

        def error(message: str, source=source) -> NoReturn:
            raise SpecError(
                f"SAE {source.name!r} ({source.describe()}): {message}",
                path=source.spec_path,
                line=source.line,
                behavior=spec.name,
                key=f"saes.{source.name}",
            )

        try:
            sae = source.load()
        except SAEError as problem:
            error(str(problem))
        hook = sae.hook_name
        suffix = next((end for end in SAE_HOOK_WIDTHS if hook.endswith("." + end)), None)
        if hook not in hooks:
            example = ", ".join(components.COMPONENTS[c].hook_name(0) for c in ("resid_pre", "resid_post"))
            error(f"its hook {hook!r} does not exist on this model (hooks such as {example})")
        if suffix is None:
            error(
                f"its hook {hook!r} is not supported: SAEs read the residual stream, attention or MLP outputs or "
                f"MLP neurons (hooks ending in {', '.join(SAE_HOOK_WIDTHS)})"
            )
        width = int(getattr(model.cfg, SAE_HOOK_WIDTHS[suffix]))
        if sae.d_in != width:
            error(f"d_in = {sae.d_in} does not fit {hook!r}, which is {width} wide on this model")
        loaded[source.name] = sae
    return loaded


def _unsupported(model) -> dict[str, str]:
    """What this model's architecture cannot support, and why (BindContext.unsupported)."""
    out = {}
    if getattr(model.cfg, "parallel_attn_mlp", False):
        out["resid_mid"] = components.get("resid_mid").needs
    why = direct.unsupported_reason(model)
    if why:
        out["direct"] = why
    why = graphs.unsupported_reason(getattr(model, "hook_dict", {}), int(model.cfg.n_layers))
    if why:
        out["edges"] = why
    return out


def _reference_ids(spec: BehaviorSpec, tok: SpecTokenizer, clean_ids):
    """[R, n] ids of the 'reference' prompts (the mean of 'ablate mean'), each of the prompt's token count."""
    import torch

    if not spec.reference:
        return None
    rows = []
    for i, text in enumerate(spec.reference):
        ids = tok.prompt(text, f"reference[{i}]")[0]
        if len(ids) != clean_ids.shape[1]:
            raise spec.error(
                f"reference prompt {text!r} tokenizes to {len(ids)} tokens but the prompt to "
                f"{clean_ids.shape[1]}; positions are averaged one to one: "
                f"{tok.model.to_str_tokens(text)}",
                f"reference[{i}]",
            )
        rows.append(ids)
    return torch.stack(rows)


def bind_behavior(
    spec: BehaviorSpec, model, model_name: str = "", seed: int = 0, options: dict | None = None
) -> BoundBehavior:
    """Draw the behavior's samples (one for a single prompt) and bind them to ``model``."""
    if spec.family is not None:
        spec, notes = _check_lexicons(spec, SpecTokenizer(spec, model))
        samples = families.expand(spec, seed)
    else:
        samples, notes = [families.instance(spec, {})], []
    bound = bind_samples(spec, model, samples, model_name, seed, options)
    bound.notes = notes
    return bound
