"""Interventions on an SAE's features, run with TransformerLens hooks (every architecture).

At the SAE's hook, an activation x splits into x = decode(f, x) + ε with f = encode(x) and
ε = x − decode(encode(x), x) (:meth:`interptest.saes.SAE.split`). A feature intervention replaces some
features f_i at some positions by a source value (the other run's features, zero, or their mean) and
**keeps ε**: x' = decode(f', x) + ε, computed as x + (decode(f', x) − decode(f, x)) so that an empty
intervention returns x bit for bit (the error-node convention of sparse feature circuits, Marks et al.
2024). A reconstruction run replaces x by decode(encode(x), x) at some positions: ε is dropped.

Only the SAE's hook changes; every computation before it is the unpatched run's, so the edit reads the
live activation of each row. Interventions of many feature sets on S samples are stacked along the
batch (row = set·S + sample) and run ``batch_size`` rows at a time; values are the metric m (logit of
the expected token − logit of the foil at the last position) of each (sample, set), [S, J] float64.
"""

from __future__ import annotations

import torch

from interptest.patching.base import MAX_ROWS, rows_within_budget

SOURCES = ("clean", "corrupt", "zero", "mean")


class FeaturePatcher:
    """One SAE on S samples of one length: ``features`` (encoded activations of a run), ``patch`` (feature
    sets replaced by a source), ``reconstruct`` (the SAE's reconstruction in place of the activation).

    clean_ids, corrupt_ids: [S, n]; expect_ids, foil_ids: S ids; noise: optional [S, n, d_model] added at
    ``hook_embed`` to every corrupted run; activations(which): the run's activations at the SAE's hook
    [rows, n, d_in] (``reference`` for the 'mean' source of a single prompt)."""

    def __init__(self, model, sae, clean_ids, corrupt_ids, expect_ids, foil_ids, noise, batch_size, activations):
        self.model, self.sae = model, sae
        self.device = getattr(model.cfg, "device", None) or "cpu"
        sae.to(self.device)
        self.ids = {"clean": clean_ids, "corrupt": corrupt_ids}
        self.expect = torch.as_tensor(expect_ids, device="cpu")
        self.foil = torch.as_tensor(foil_ids, device="cpu")
        self.noise = noise
        self.batch_size = batch_size
        self._activations = activations
        self._features: dict = {}

    @property
    def rows(self) -> int:
        """Rows per forward: ``batch_size`` when given, else as many as the device's budget holds (the
        forward's activations, as the circuit engine counts them, plus the SAE's features of each row)."""
        if self.batch_size:
            return int(self.batch_size)
        cfg = self.model.cfg
        d = int(cfg.d_model)
        d_mlp = int(getattr(cfg, "d_mlp", None) or 4 * d)
        n = int(self.ids["clean"].shape[1])
        per_row = n * (10 * d + 2 * d_mlp + 2 * int(cfg.n_heads) * n + int(cfg.d_vocab) + 3 * self.sae.d_sae) * 4
        return rows_within_budget(self, per_row, MAX_ROWS)

    @property
    def n_samples(self) -> int:
        return int(self.ids["clean"].shape[0])

    def features(self, which: str) -> torch.Tensor:
        """encode(x) of run ``which`` (clean, corrupt or reference) at every position [rows, n, d_sae] (CPU)."""
        if which not in self._features:
            acts = self._activations(which)
            self._features[which] = self.sae.encode(acts.to(self.device)).cpu()
        return self._features[which]

    def source(self, source: str, mean_over: str = "clean") -> torch.Tensor:
        """The replacement features [S, n, d_sae]: a run's own (clean, corrupt), zero, or the mean over
        ``mean_over``'s rows (the family's clean samples, or the reference prompts)."""
        if source in ("clean", "corrupt"):
            return self.features(source)
        shape = self.features("clean").shape
        if source == "zero":
            return torch.zeros(shape, dtype=self.sae.dtype)
        assert source == "mean", source
        return self.features(mean_over).mean(dim=0, keepdim=True).expand(shape)

    def patch(self, sets, positions, base: str, source: str, mean_over: str = "clean") -> torch.Tensor:
        """m of run ``base`` with each set's features (a list of indices) at ``positions`` replaced by
        ``source``'s: [S, len(sets)] float64."""
        d_sae, n = self.sae.d_sae, int(self.ids["clean"].shape[1])
        masks = torch.zeros(len(sets), d_sae, dtype=torch.bool)
        for j, features in enumerate(sets):
            masks[j, list(features)] = True
        where = torch.zeros(n, dtype=torch.bool)
        where[list(positions)] = True
        values = self.source(source, mean_over)

        def edit(act, rows):
            sae = self.sae
            samples, sets_of = rows % self.n_samples, rows // self.n_samples
            f = sae.encode(act)
            mask = (where.to(act.device)[None, :, None] & masks.to(act.device)[sets_of][:, None, :]).to(f.device)
            f2 = torch.where(mask, values.to(f.device)[samples], f)
            return act + (sae.decode(f2, act) - sae.decode(f, act)).to(act.dtype)

        return self._run(base, len(sets), edit)

    def reconstruct(self, positions, base: str) -> torch.Tensor:
        """m of run ``base`` with the activation at ``positions`` replaced by decode(encode(x), x): [S]."""
        n = int(self.ids["clean"].shape[1])
        where = torch.zeros(n, dtype=torch.bool)
        where[list(positions)] = True

        def edit(act, rows):
            x_hat = self.sae.decode(self.sae.encode(act), act).to(act.dtype)
            return torch.where(where.to(act.device)[None, :, None], x_hat, act)

        return self._run(base, 1, edit)[:, 0]

    def _run(self, base: str, n_sets: int, edit) -> torch.Tensor:
        ids = self.ids[base]
        assert ids is not None, f"no {base} run"
        S = self.n_samples
        total = S * n_sets
        out = torch.empty(total, dtype=torch.float64)
        hook = self.sae.hook_name
        for start in range(0, total, self.rows):
            rows = torch.arange(start, min(total, start + self.rows))
            samples = rows % S
            hooks = [(hook, lambda act, hook=None, rows=rows: edit(act, rows.to(act.device)))]
            if base == "corrupt" and self.noise is not None:
                noise = self.noise[samples.to(self.noise.device)]
                hooks.insert(0, ("hook_embed", lambda act, hook=None, noise=noise: act + noise.to(act.dtype)))
            with torch.no_grad():
                logits = self.model.run_with_hooks(ids[samples].to(self.device), fwd_hooks=hooks)[:, -1].float().cpu()
            r = torch.arange(len(rows))
            out[start : start + len(rows)] = (logits[r, self.expect[samples]] - logits[r, self.foil[samples]]).double()
        return out.reshape(n_sets, S).T.contiguous()
