"""Check one behavior on one model: one pipeline for a single prompt and a prompt family alike.

A single prompt is a family of one sample. ``bind_behavior`` draws the samples and does every check
that needs the model but no forward pass (token counts, unknown words, producible answers, single
tokens, positions, layers, heads) — for every sample; its errors are :class:`SpecError`, so the
plugin reports them at collection. ``run_behavior`` runs the samples together through the patching
engine and asks each claim kind to measure and judge itself (:mod:`interptest.claims`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NoReturn

from interptest import families
from interptest.claims import (
    BindContext,
    ClaimBindError,
    ClaimBindIndexError,
    Unjudgeable,
    bind_all,
    judge,
    precision_limit,
    resolve_positions,
)
from interptest.errors import InterpError, SpecError
from interptest.spec import BehaviorSpec, bind_error, parse_behavior

DEFAULT_MODEL = "interptest-tiny"
TOP_K = 5
SHRINK_EXAMPLES = 60


@dataclass(frozen=True)
class Prediction:
    token: str
    prob: float


@dataclass
class CheckResult:
    """One check of a behavior: an implicit one (``expect`` is the top-1 prediction) or a claim."""

    text: str
    passed: bool
    value: float | None
    detail: str = ""
    claim: Any = None
    bound: Any = None  # what the claim bound to (cells, token ids, ...)
    patch_map: Any = None  # the PatchMap the verdict was read from, for the failure map
    failing_cells: tuple = ()
    figure: dict | None = None  # what the report draws for this claim (see claims.base.Measurement)


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

    @property
    def n_samples(self) -> int:
        return len(self.samples)


@dataclass
class BehaviorResult:
    behavior: BehaviorSpec
    model_name: str
    tokens: list[str]
    corrupt_tokens: list[str] | None
    expect: str
    foil: str | None
    clean_metric: float | None
    corrupt_metric: float | None
    clean_top: list[Prediction]
    corrupt_top: list[Prediction]
    checks: list[CheckResult]
    maps: dict = field(default_factory=dict)  # (component, direction) -> PatchMap (a family: the mean)
    baseline: dict | None = None  # {"status": missing|ok|moved, "detail": ...} when compared
    suggestion: str | None = None  # --interp-suggest's YAML
    samples: int = 1  # how many samples the numbers summarise
    engine: dict | None = None  # which patching engine ran (Run.engine_record), None when nothing was patched

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def failures(self) -> list[CheckResult]:
        return [check for check in self.checks if not check.passed]


class BehaviorFailed(AssertionError):
    """Raised by :func:`check_behavior` when a check fails; ``str()`` is the full failure report."""

    def __init__(self, result: BehaviorResult):
        self.result = result
        from interptest.render import render_failure

        super().__init__(render_failure(result, color=False))


# ---------------------------------------------------------------------------------------------
# Binding: every tokenizer check, in one place, for every sample


class _Tokenizer:
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


def _check_lexicons(spec: BehaviorSpec, tok: _Tokenizer) -> tuple[BehaviorSpec, list[str]]:
    """Every value of every variable must be one token where the template puts it. With
    ``single_token: drop`` the rows holding such a value are dropped instead (the returned spec, and a
    note naming them); otherwise every offending entry is a collection error."""
    import dataclasses

    from interptest.spec import Family, check_sample_count

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


def _swap_tokens(spec: BehaviorSpec, tok: _Tokenizer, ids, replace):
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


def _sample_tensors(spec: BehaviorSpec, tok: _Tokenizer, samples) -> tuple:
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
    from interptest import components

    tok = _Tokenizer(spec, model)
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
    )
    try:
        bound_claims = bind_all(list(spec.claims), context)
    except ClaimBindIndexError as error:
        raise bind_error(spec, error) from None
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
    )


def _reference_ids(spec: BehaviorSpec, tok: _Tokenizer, clean_ids):
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
        spec, notes = _check_lexicons(spec, _Tokenizer(spec, model))
        samples = families.expand(spec, seed)
    else:
        samples, notes = [families.instance(spec, {})], []
    bound = bind_samples(spec, model, samples, model_name, seed, options)
    bound.notes = notes
    return bound


# ---------------------------------------------------------------------------------------------
# Running


class Run:
    """The forwards of one bound behavior, computed once and shared by every claim: clean and
    corrupted logits, the foils, the metrics, and the patching engine (opened on first use)."""

    def __init__(self, bound: BoundBehavior, batch_size: int | None = None):
        import torch

        self.bound, self.batch_size = bound, batch_size
        self.model = bound.model
        self.dtype = str(next(iter(self.model.parameters())).dtype).removeprefix("torch.")
        self.tokens = bound.tokens
        self.maps: dict = {}
        self._patcher = None
        self._sweeps: dict = {}
        self._acts: dict = {}
        self._memo: dict = {}
        device = _device(self.model)
        self.noise = _noise(bound, device)
        self.clean_logits = _last_logits(self.model, bound.clean_ids, device, None, batch_size)
        self.corrupt_logits = None
        if bound.corrupt_ids is not None:
            self.corrupt_logits = _last_logits(self.model, bound.corrupt_ids, device, self.noise, batch_size)
        first = torch.tensor([ids[0] for ids in bound.expect_ids], device="cpu")
        self.expect_first = first
        self.foil_ids = None
        if bound.foil_ids is not None:
            self.foil_ids = torch.tensor(bound.foil_ids, device="cpu")
        elif self.corrupt_logits is not None:
            self.foil_ids = self.corrupt_logits.argmax(-1)
        self.clean_metrics = self.corrupt_metrics = None
        if self.foil_ids is not None:
            self.clean_metrics = _metrics(self.clean_logits, first, self.foil_ids)
            if self.corrupt_logits is not None:
                self.corrupt_metrics = _metrics(self.corrupt_logits, first, self.foil_ids)

    def foil_problem(self) -> str | None:
        if self.foil_ids is None:
            return None
        same = (self.foil_ids == self.expect_first).nonzero()
        if not same.numel():
            return None
        where = (
            f" on sample {int(same[0, 0])} ({self.bound.samples[int(same[0, 0])].prompt!r})"
            if self.bound.n_samples > 1
            else ""
        )
        return (
            f"the foil (top-1 on the corrupted prompt) is the expected token {self.bound.spec.expect!r} "
            f"itself{where}; set 'foil' or choose a corruption that changes the prediction"
        )

    def effect_problem(self) -> str | None:
        """Why patching claims cannot be judged on this run, or None."""
        problem = self.foil_problem()
        if problem:
            return problem
        spec = self.bound.spec
        # Patching claims require a corruption, so both runs have a foil and a metric.
        assert self.clean_metrics is not None and self.corrupt_metrics is not None, "no corrupted run"
        delta = self.clean_metrics - self.corrupt_metrics
        weak = int((delta.abs() < spec.min_effect).sum())
        if not weak:
            return None
        if self.bound.n_samples == 1:
            return (
                f"the corruption barely changes the behavior (Δ = {float(delta[0]):.3f}, below min_effect "
                f"{spec.min_effect:g}); the claim cannot be judged"
            )
        return (
            f"the corruption barely changes the behavior on {weak} of {self.bound.n_samples} samples "
            f"(|Δ| < min_effect {spec.min_effect:g}; smallest Δ = {float(delta.abs().min()):.3f}); the claim "
            "cannot be judged"
        )

    def activations(self, which: str, names, ids=None) -> dict:
        """Cached activations {hook name: [rows, ...] float32 CPU tensor} of the clean or corrupted run
        (a noise corruption's noise included) of every sample, or of other token ids ``ids`` [rows, n]
        that a claim names ``which``; computed once per (which, name)."""
        import torch

        missing = [nm for nm in names if (which, nm) not in self._acts]
        if missing:
            if ids is None:
                ids = self.bound.clean_ids if which == "clean" else self.bound.corrupt_ids
            noise = self.noise if which == "corrupt" else None
            wanted = set(missing)
            parts: dict = {nm: [] for nm in missing}
            rows = self.batch_size or 32
            device = _device(self.model)
            for start in range(0, ids.shape[0], rows):
                with self.model.hooks(fwd_hooks=_noise_hooks(noise, start, rows)):
                    _, cache = self.model.run_with_cache(
                        ids[start : start + rows].to(device), names_filter=lambda nm: nm in wanted
                    )
                for nm in missing:
                    parts[nm].append(cache[nm].detach().float().cpu())
            for nm in missing:
                self._acts[(which, nm)] = torch.cat(parts[nm])
        return {nm: self._acts[(which, nm)] for nm in names}

    def memo(self, key: str, compute):
        """``compute()`` once per run, shared by every claim that asks for ``key``."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def circuits(self):
        """The path-patching and ablation engine for every sample at once
        (:class:`interptest.patching.paths.CircuitPatcher`), opened on first use."""
        if getattr(self, "_circuits", None) is None:
            from interptest.patching.paths import CircuitPatcher

            bound = self.bound
            foil = self.foil_ids if self.foil_ids is not None else self.expect_first
            self._circuits = CircuitPatcher(
                self.model,
                bound.clean_ids,
                bound.corrupt_ids,
                self.expect_first,
                foil,
                embed_noise=self.noise,
                reference_ids=bound.reference_ids,
                batch_size=self.batch_size,
            )
        return self._circuits

    def engine_record(self) -> dict | None:
        """Which engines this run used: {"patching": "fast" | "generic", "why": why the fast engine declined
        ("" where it ran), "circuits": "hooks" where path or circuit claims ran}; None when nothing was patched."""
        record: dict = {}
        if self._patcher is not None:
            engine = getattr(self._patcher, "engine", None)
            record["patching"] = engine
            record["why"] = "" if engine == "fast" else getattr(self._patcher, "engine_note", "")
        if getattr(self, "_circuits", None) is not None:
            record["circuits"] = "hooks"
        return record or None

    def patcher(self):
        """The patching engine for every sample at once (BatchPatcher's interface: [S, ...] values)."""
        if self._patcher is None:
            assert self.foil_ids is not None, "patching claims require a corruption, hence a foil"
            assert self.corrupt_logits is not None, "a foil comes with a corruption"
            self._patcher = open_patcher(
                self.model,
                self.bound.clean_ids,
                self.bound.corrupt_ids,
                self.expect_first.tolist(),
                self.foil_ids.tolist(),
                self.noise,
                self.batch_size,
                logits=(self.clean_logits, self.corrupt_logits),
            )
        return self._patcher

    def sweep(self, component: str, direction: str):
        """Every sample's map of a component [S, layers, columns], and their mean as a PatchMap."""
        key = (component, direction)
        if key not in self._sweeps:
            from interptest.patching import PatchMap

            patcher = self.patcher()
            values = patcher.sweep(component, direction)
            patch_map = getattr(patcher, "patch_map", None)
            if patch_map is not None:  # one sample: the engine's own map, raw values included
                patch_map = patch_map(component, direction)
            else:
                raw = patcher.sweep_raw(component, direction)
                patch_map = PatchMap(
                    component,
                    direction,
                    values.mean(dim=0),
                    raw.mean(dim=0),
                    list(self.tokens),
                    float(patcher.clean_metrics.mean()),
                    float(patcher.corrupt_metrics.mean()),
                )
            self._sweeps[key] = (values, patch_map)
            self.maps[key] = patch_map
        return self._sweeps[key]


def _device(model):
    return getattr(model.cfg, "device", None) or "cpu"


def _noise(bound: BoundBehavior, device):
    """Gaussian noise on the token embeddings at the noised positions; scale in units of the
    embedding matrix's standard deviation (ROME's causal tracing). Seeded: same seed, same noise."""
    import torch

    if bound.noise_positions is None:
        return None
    model = bound.model
    d_model = int(model.cfg.d_model)
    std = float(model.W_E.float().std())
    generator = torch.Generator(device="cpu").manual_seed(families.sample_seed(bound.seed, bound.spec))
    noise = torch.zeros(bound.n_samples, bound.clean_ids.shape[1], d_model, device="cpu")
    draws = torch.randn(bound.n_samples, len(bound.noise_positions), d_model, generator=generator, device="cpu")
    assert bound.spec.corruption is not None, "noise positions come from a noise corruption"
    noise[:, bound.noise_positions] = draws * bound.spec.corruption.scale * std
    return noise.to(device)


def _noise_hooks(noise, start: int, rows: int) -> list:
    """The hook adding samples start..start+rows's embedding noise (none without noise)."""
    if noise is None:
        return []
    part = noise[start : start + rows]

    def add_noise(act, hook=None):
        return act + part.to(act.dtype)

    return [("hook_embed", add_noise)]


def _last_logits(model, ids, device, noise, batch_size):
    """Next-token logits at the last position [S, vocab], float32 on the CPU."""
    import torch

    rows = batch_size or 32
    out = []
    for start in range(0, ids.shape[0], rows):
        chunk = ids[start : start + rows].to(device)
        hooks = _noise_hooks(noise, start, rows)
        logits = model.run_with_hooks(chunk, fwd_hooks=hooks) if hooks else model(chunk)
        out.append(logits[:, -1].float().cpu())
    return torch.cat(out)


def _metrics(logits, expect, foil):
    import torch

    rows = torch.arange(logits.shape[0], device="cpu")
    return (logits[rows, expect] - logits[rows, foil]).double()


def open_patcher(
    model, clean_ids, corrupt_ids, expect_ids: list[int], foil_ids: list[int], noise, batch_size, logits=None
):
    """The fastest engine for these samples: a single prompt without noise takes :class:`Patcher`
    (fast engine where supported), everything else :class:`BatchPatcher`.  ``logits``: the clean and
    corrupted last-position logits the caller computed already (the engine does not run them again;
    its metrics are then the caller's, exactly)."""
    from interptest.patching import BatchPatcher, Patcher

    if clean_ids.shape[0] == 1 and noise is None:
        return _OneSample(
            Patcher(model, clean_ids, corrupt_ids, expect_ids[0], foil_ids[0], batch_size=batch_size, _logits=logits)
        )
    return BatchPatcher(
        model, clean_ids, corrupt_ids, expect_ids, foil_ids, embed_noise=noise, batch_size=batch_size, _logits=logits
    )


class _OneSample:
    """A :class:`Patcher` seen through BatchPatcher's interface (a leading sample axis of size 1)."""

    def __init__(self, patcher):
        import torch

        self._p = patcher
        self.engine, self.engine_note = patcher.engine, patcher.engine_note
        self.clean_metrics = torch.tensor([patcher.clean_metric], dtype=torch.float64, device="cpu")
        self.corrupt_metrics = torch.tensor([patcher.corrupt_metric], dtype=torch.float64, device="cpu")

    def patch_map(self, component: str, direction: str):
        return self._p.sweep(component, direction)

    def sweep(self, component: str, direction: str = "denoise"):
        return self._p.sweep(component, direction).values[None]

    def sweep_raw(self, component: str, direction: str = "denoise"):
        return self._p.sweep(component, direction).raw[None]

    def cells_value(self, component: str, cells, direction: str = "denoise"):
        return self._p.cells_value(component, cells, direction)[None]

    def joint(self, component: str, cells, direction: str = "denoise"):
        import torch

        return torch.tensor([self._p.joint(component, cells, direction)], device="cpu")


def _top(model, logits, k: int = TOP_K) -> list[Prediction]:
    import torch

    probs = torch.softmax(logits.float(), dim=-1)
    values, ids = probs.topk(k)
    return [Prediction(model.tokenizer.decode([i]), float(p)) for p, i in zip(values.tolist(), ids.tolist())]


def _greedy_failure(run: Run, s: int) -> str | None:
    """Why sample s's ``expect`` is not what the model predicts token after token, or None."""
    import torch

    bound, model = run.bound, run.model
    expect = bound.expect_ids[s]
    ids = bound.clean_ids[s : s + 1]
    logits = run.clean_logits[s]
    for step, target in enumerate(expect):
        predicted = int(logits.argmax())
        if predicted != target:
            produced = model.tokenizer.decode(expect[:step] + [predicted])
            prob = float(torch.softmax(logits, -1)[target])
            where = f" after {model.tokenizer.decode(expect[:step])!r}" if step else ""
            hint = ""
            text = bound.samples[s].expect
            if (
                not step
                and not text.startswith(" ")
                and model.to_tokens(" " + text, prepend_bos=False)[0].tolist()[:1] == [predicted]
            ):
                hint = (
                    f"; that is {text!r} with a leading space: YAML drops the leading space of an unquoted "
                    f'value, so quote it with the space: expect: "{" " + text}"'
                )
            return f"the model predicts {produced!r}{where}; p({model.tokenizer.decode([target])!r}) = {prob:.3f}{hint}"
        if step + 1 < len(expect):
            ids = torch.cat([ids, torch.tensor([[target]], device="cpu")], dim=1)
            logits = _last_logits(model, ids, _device(model), None, None)[0]
    return None


def _top1_check(run: Run) -> CheckResult:
    """``expect`` must be what the model predicts: its top-1 next token, token after token."""
    import torch

    bound = run.bound
    text = f"top-1 prediction is {bound.spec.expect!r}"
    failures = [_greedy_failure(run, s) for s in range(bound.n_samples)]
    if bound.n_samples == 1:
        first = bound.expect_ids[0][0]
        prob = float(torch.softmax(run.clean_logits[0], -1)[first])
        if failures[0]:
            return CheckResult(text, False, prob, failures[0])
        return CheckResult(text, True, prob, "the measured value is p(first token)")
    from interptest.stats import pass_rate

    rate = pass_rate([f is None for f in failures])
    wrong = [s for s, f in enumerate(failures) if f]
    detail = f"top-1 accuracy {rate:.2f} over {bound.n_samples} samples"
    if wrong:
        detail += f"; wrong on e.g. {bound.samples[wrong[0]].prompt!r}: {failures[wrong[0]]}"
    for note in bound.notes:
        detail += f"; {note}"
    return CheckResult(text, not wrong, rate, detail)


def run_behavior(bound: BoundBehavior, *, batch_size: int | None = None, shrink: bool = True) -> BehaviorResult:
    import torch

    spec, model = bound.spec, bound.model
    with torch.inference_mode():
        run = Run(bound, batch_size)
        foil = model.tokenizer.decode([int(run.foil_ids[0])]) if run.foil_ids is not None else None
        result = BehaviorResult(
            spec,
            bound.model_name,
            bound.tokens,
            bound.corrupt_tokens,
            bound.samples[0].expect,
            foil,
            None if run.clean_metrics is None else float(run.clean_metrics.mean()),
            None if run.corrupt_metrics is None else float(run.corrupt_metrics.mean()),
            _top(model, run.clean_logits[0]),
            _top(model, run.corrupt_logits[0]) if run.corrupt_logits is not None else [],
            [_top1_check(run)],
            samples=bound.n_samples,
        )
        seed = families.sample_seed(bound.seed, spec)
        for index, (claim, bound_claim) in enumerate(zip(spec.claims, bound.bound_claims)):
            try:
                measurement = claim.measure(bound_claim, run)
            except Unjudgeable as why:
                result.checks.append(CheckResult(claim.text, False, None, why.detail, claim, bound_claim))
                continue
            verdict = judge(claim, measurement, spec.claim_pass_rate(index), seed)
            check = CheckResult(
                claim.text,
                verdict.passed,
                verdict.value,
                verdict.detail,
                claim,
                bound_claim,
                measurement.patch_map,
                verdict.failing,
                measurement.figure,
            )
            undecided = precision_limit(claim, verdict, run.dtype, result.clean_metric)
            if undecided:  # too close to the threshold for this precision: never a silent pass or fail
                check.passed = False
                check.detail += undecided
            if not verdict.passed and spec.family is not None and shrink:
                check.detail += _minimal_instance(bound, index, batch_size)
            result.checks.append(check)
        result.maps = dict(run.maps)
        result.engine = run.engine_record()
    return result


def _minimal_instance(bound: BoundBehavior, index: int, batch_size) -> str:
    """Hypothesis shrinks to the smallest instance on which claim ``index`` fails on its own."""
    from hypothesis import HealthCheck, Phase, find, settings
    from hypothesis.errors import NoSuchExample

    spec = bound.spec
    claim = spec.claims[index]
    last: dict = {}

    def fails(pair) -> bool:
        values, corrupt_values = pair
        sample = families.instance(spec, values, corrupt_values)
        try:
            single = bind_samples(spec, bound.model, [sample], bound.model_name, bound.seed, bound.options)
        except SpecError:  # this instance cannot even be bound (e.g. another token count)
            return False
        run = Run(single, batch_size)
        try:
            measurement = claim.measure(single.bound_claims[index], run)
        except Unjudgeable:
            return False
        verdict = judge(claim, measurement, None, 0)
        if not verdict.passed:
            last["value"] = verdict.value
        return not verdict.passed

    config = settings(
        max_examples=SHRINK_EXAMPLES,
        database=None,
        derandomize=True,
        deadline=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    try:
        values, corrupt_values = find(families.instance_strategy(spec), fails, settings=config)
        fails((values, corrupt_values))
    except NoSuchExample:
        return (
            f"\nno single instance fails on its own within {SHRINK_EXAMPLES} tries: the claim fails on the "
            "family's mean"
        )
    sample = families.instance(spec, values, corrupt_values)
    block = families.as_yaml(spec, sample, claim.text, last.get("value"))
    return "\nminimal failing instance (shrunk by hypothesis), ready to paste:\n" + block


# ---------------------------------------------------------------------------------------------
# The public sweep: as strict as a spec


def patch_sweep(
    model,
    prompt: str,
    corrupt: str,
    component: str,
    expect: str,
    foil: str | None = None,
    direction: str = "denoise",
    batch_size: int | None = None,
):
    """Patch ``component`` at every (layer, position) — (layer, head) for ``heads`` — and return the
    :class:`~interptest.patching.PatchMap` of normalized values (``raw`` patched logit differences,
    ``clean_metric``, ``corrupt_metric`` and ``delta`` beside them).

    The inputs are checked as a spec's are, with the same messages: ``expect`` and ``foil`` must be
    single tokens the model produces, every word must be known to the tokenizer, the prompts must differ
    and tokenize to the same length, and the corruption must change the logit difference."""
    import warnings

    import torch

    from interptest import components
    from interptest.spec import DEFAULT_MIN_EFFECT

    if component not in components.COMPONENTS:
        raise InterpError(f"unknown component {component!r}; valid components: {', '.join(components.NAMES)}")
    if direction not in ("denoise", "noise"):
        raise InterpError(
            f"unknown direction {direction!r}; valid directions: denoise, noise (denoise = patch clean "
            "into corrupted, 'recovers'; noise = patch corrupted into clean, 'breaks')"
        )
    entry = {"name": "patch_sweep", "prompt": prompt, "expect": expect, "corrupt": corrupt}
    if foil is not None:
        entry["foil"] = foil
    try:
        spec = parse_behavior(entry, path="patch_sweep()")
        bound = bind_behavior(spec, model, getattr(model.cfg, "model_name", "model"))
        if len(bound.expect_ids[0]) != 1:
            raise spec.error(
                f"expect must be a single token; {expect!r} is {len(bound.expect_ids[0])} tokens "
                f"{_Tokenizer(spec, model).decode(bound.expect_ids[0])}",
                "expect",
            )
    except SpecError as error:
        raise InterpError(
            f"patch_sweep: {error.key}: {error.message}" if error.key else f"patch_sweep: {error.message}"
        ) from None
    if component not in components.available(getattr(model, "hook_dict", {})):
        raise InterpError(components.unavailable_message(component, bound.model_name, model.hook_dict))
    with torch.inference_mode():
        run = Run(bound, batch_size)
        problem = run.foil_problem()
        if problem:
            raise InterpError(f"patch_sweep: {problem}")
        # patch_sweep always has a corrupted prompt, so both runs have a metric
        assert run.clean_metrics is not None and run.corrupt_metrics is not None
        delta = float(run.clean_metrics[0] - run.corrupt_metrics[0])
        if not math.isfinite(delta) or delta == 0:
            raise InterpError(
                f"patch_sweep: the clean and corrupted runs give the same logit difference "
                f"(m_clean − m_corrupt = {delta}), so normalized values are undefined; choose a "
                "corruption that changes the prediction"
            )
        if abs(delta) < DEFAULT_MIN_EFFECT:
            warnings.warn(
                f"patch_sweep: the corruption barely changes the behavior (Δm = {delta:.3g}, below "
                f"{DEFAULT_MIN_EFFECT:g}); normalized values divide by Δm and amplify rounding",
                stacklevel=2,
            )
        return run.sweep(component, direction)[1]


# ---------------------------------------------------------------------------------------------
# Models, cached per process


class ModelCache:
    """Loads each (model, device, dtype) once; ``clear()`` releases them.

    ``ModelCache.shared``, when a test harness sets it to a dict, is one store for every cache of the
    process (pytester's in-process runs then load each model once); a cache still sets its own thread
    count on first use, and ``clear()`` leaves the shared store alone."""

    shared: dict | None = None

    def __init__(
        self, device: str | None = None, dtype: str | None = None, threads: int | None = None, device_map=None
    ):
        self.device, self.dtype, self.threads, self.device_map = device, dtype, threads, device_map
        self._models: dict = {}
        self._configured = False

    def get(self, name: str):
        from interptest.model import configure_threads, load_model

        if not self._configured:
            configure_threads(self.threads)
            self._configured = True
        store = ModelCache.shared if ModelCache.shared is not None else self._models
        key = (name, self.device, self.dtype, str(self.device_map))
        if key not in store:
            store[key] = load_model(name, device=self.device, dtype=self.dtype, device_map=self.device_map)
        return store[key]

    def clear(self) -> None:
        self._models.clear()
        import gc

        gc.collect()


_DEFAULT_CACHE = ModelCache()


def check_behavior(
    spec, model=None, *, batch_size: int | None = None, seed: int = 0, raise_on_failure: bool = True
) -> BehaviorResult:
    """Check one behavior given as a dict with the YAML keys (or a parsed :class:`BehaviorSpec`).

    ``model`` is a loaded TransformerBridge, a model name / checkpoint directory, or None for the
    behavior's own ``model`` key (default ``interptest-tiny``). Raises :class:`BehaviorFailed`
    (an AssertionError whose message is the full report) when a check fails, unless
    ``raise_on_failure`` is False; bad input raises :class:`SpecError`.
    """
    __tracebackhide__ = True  # pytest shows the user's call, not interptest's frames
    try:
        behavior = spec if isinstance(spec, BehaviorSpec) else parse_behavior(spec)
        if model is None or isinstance(model, str):
            name = model or behavior.model or DEFAULT_MODEL
            model = _DEFAULT_CACHE.get(name)
        else:
            name = getattr(model.cfg, "model_name", "model")
        result = run_behavior(bind_behavior(behavior, model, name, seed), batch_size=batch_size)
    except InterpError as error:
        # The message says everything; raised from here, the traceback ends at the user's own line.
        raise error.with_traceback(None) from None
    if raise_on_failure and not result.passed:
        raise BehaviorFailed(result)
    return result


__all__ = [
    "BehaviorFailed",
    "BehaviorResult",
    "BoundBehavior",
    "CheckResult",
    "InterpError",
    "ModelCache",
    "SpecError",
    "bind_behavior",
    "bind_samples",
    "check_behavior",
    "patch_sweep",
    "run_behavior",
]
