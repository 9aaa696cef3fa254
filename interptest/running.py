"""Running a bound behavior: the forwards every claim shares.

:class:`Run` computes the clean and corrupted logits, the foils and the metrics of every sample once,
and opens the engines on first use — the patching engine (:mod:`interptest.patching`) for sweeps and
joint patches, the circuit engine (:class:`interptest.patching.paths.CircuitPatcher`) for paths,
ablations and node sets — so that every claim of the behavior reads the same runs. torch is imported
where it is used: binding and spec checks run without it.
"""

from __future__ import annotations

from interptest import families
from interptest.binding import BoundBehavior
from interptest.maps import PatchMap


class Run:
    """The forwards of one bound behavior, computed once and shared by every claim: clean and
    corrupted logits, the foils, the metrics, and the patching engine (opened on first use)."""

    def __init__(self, bound: BoundBehavior, batch_size: int | None = None):
        import torch

        self.bound, self.batch_size = bound, batch_size
        self.model = bound.model
        self.dtype = str(next(iter(self.model.parameters())).dtype).removeprefix("torch.")
        self.tokens = bound.tokens
        self.seed = families.sample_seed(bound.seed, bound.spec)  # the seed of every draw a claim makes
        self.maps: dict = {}
        self._patcher = None
        self._sweeps: dict = {}
        self._acts: dict = {}
        self._memo: dict = {}
        device = device_of(self.model)
        self.noise = _noise(bound, device)
        self.clean_logits = last_logits(self.model, bound.clean_ids, device, None, batch_size)
        self.corrupt_logits = None
        if bound.corrupt_ids is not None:
            self.corrupt_logits = last_logits(self.model, bound.corrupt_ids, device, self.noise, batch_size)
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
                f"the corruption barely changes the behavior (Δ = {float(delta[0]):z.3f}, below min_effect "
                f"{spec.min_effect:g}); the claim cannot be judged"
            )
        return (
            f"the corruption barely changes the behavior on {weak} of {self.bound.n_samples} samples "
            f"(|Δ| < min_effect {spec.min_effect:g}; smallest Δ = {float(delta.abs().min()):z.3f}); the claim "
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
            device = device_of(self.model)
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
        ("" where it ran), "circuits": where path or circuit claims ran, which engine ran them ("fast", "hooks
        (why)", "fast + hooks (paths)": :meth:`CircuitPatcher.engine_used`), "edges": which forward ran edge
        circuits ("fast", "hooks (why)"), where any ran}; None when nothing was patched."""
        record: dict = {}
        if self._patcher is not None:
            engine = getattr(self._patcher, "engine", None)
            record["patching"] = engine
            record["why"] = "" if engine == "fast" else getattr(self._patcher, "engine_note", "")
        if getattr(self, "_circuits", None) is not None:
            from interptest.patching.edges import edge_engine_used  # defers torch

            record["circuits"] = self._circuits.engine_used()
            edges = edge_engine_used(self._circuits)
            if edges:
                record["edges"] = edges
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


def device_of(model):
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


def last_logits(model, ids, device, noise, batch_size):
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
