"""The generic engine: the TransformerLens bridge run with hooks, for every architecture it supports.

The rows of every batched forward are (sample, cells) pairs: each row runs its sample's base tokens,
and hooks write that sample's source activation into the row at the patched cells, in place, as
``transformer_lens.patching``'s setters do. Rows are grouped by (first) layer so that one forward
touches few hook points; the patched metrics of all rows come back to the CPU once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from interptest.patching.base import hook_name


class HookEngine:
    """Patched metrics of (sample, cells) rows over S prompt pairs, through the bridge's hooks.

    tokens: {"clean": [S, n], "corrupt": [S, n]} on the model's device; expect/foil: [S] on the
    device; noise: optional [S, n, d_model] on the device, added at ``hook_embed`` to every
    corrupted run."""

    def __init__(
        self,
        model,
        tokens: dict,
        expect: torch.Tensor,
        foil: torch.Tensor,
        noise: torch.Tensor | None,
        rows_per_batch: int,
    ):
        self.model = model
        self.tokens = tokens
        self.expect, self.foil = expect, foil
        self.noise = noise
        self.rows_per_batch = rows_per_batch
        self.n_layers = int(model.cfg.n_layers)
        self._src_cache: dict[tuple[str, str], dict[str, torch.Tensor]] = {}

    def noise_hook(self, samples: torch.Tensor):
        """samples: row -> sample index, on the model's device."""
        assert self.noise is not None  # only runs with embedding noise ask for its hook
        noise = self.noise[samples]

        def hook(act, hook=None):
            return act + noise.to(act.dtype)

        return hook

    def last_logits(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Unpatched next-token logits [S, vocab] of the clean and the corrupted (+ noise) runs, on the
        CPU; both runs share forwards (clean samples first)."""
        tokens = torch.cat([self.tokens["clean"], self.tokens["corrupt"]])
        S = self.tokens["clean"].shape[0]
        out = []
        with torch.inference_mode():
            for start in range(0, 2 * S, self.rows_per_batch):
                stop = min(start + self.rows_per_batch, 2 * S)
                hooks = []
                if self.noise is not None and stop > S:  # rows of corrupted samples in this batch
                    first = max(start, S)
                    noisy = torch.arange(first - start, stop - start, device=tokens.device)
                    samples = torch.arange(first - S, stop - S, device=tokens.device)
                    hooks = [("hook_embed", self._rows_noise_hook(noisy, samples))]
                logits = self.model.run_with_hooks(tokens[start:stop], fwd_hooks=hooks)
                out.append(logits[:, -1].detach().float())
        logits = torch.cat(out).cpu()  # one transfer
        return logits[:S], logits[S:]

    def _rows_noise_hook(self, rows: torch.Tensor, samples: torch.Tensor):
        """Add sample ``samples[i]``'s noise to batch row ``rows[i]`` (the other rows are clean)."""
        assert self.noise is not None  # only runs with embedding noise ask for its hook
        noise = self.noise[samples]

        def hook(act, hook=None):
            act = act.clone()
            act[rows] = act[rows] + noise.to(act.dtype)
            return act

        return hook

    def metrics(self, last: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        """m per row: last[r, expect[s_r]] - last[r, foil[s_r]] (float32, on last's device: with a
        device_map the logits come from the last layer's device, not the embedding's)."""
        samples = samples.to(last.device)
        e = self.expect.to(last.device)[samples].unsqueeze(1)
        f = self.foil.to(last.device)[samples].unsqueeze(1)
        return (last.gather(1, e).float() - last.gather(1, f).float()).squeeze(1)

    def source_acts(self, component: str, run: str) -> dict[str, torch.Tensor]:
        """{hook name: [S, ...]} activations of the clean or corrupted (+ noise) run, every layer."""
        key = (component, run)
        if key not in self._src_cache:
            tokens = self.tokens[run]
            noise = run == "corrupt" and self.noise is not None
            names = [hook_name(component, l) for l in range(self.n_layers)]
            wanted = set(names)
            parts: dict[str, list[torch.Tensor]] = {nm: [] for nm in names}
            S = tokens.shape[0]
            with torch.inference_mode():
                for start in range(0, S, self.rows_per_batch):
                    samples = torch.arange(start, min(start + self.rows_per_batch, S), device=tokens.device)
                    hooks = [("hook_embed", self.noise_hook(samples))] if noise else []
                    with self.model.hooks(fwd_hooks=hooks):
                        _, cache = self.model.run_with_cache(tokens[samples], names_filter=lambda nm: nm in wanted)
                    for nm in names:
                        parts[nm].append(cache[nm].detach().clone())
                self._src_cache[key] = {nm: torch.cat(parts[nm]) for nm in names}
        return self._src_cache[key]

    def run_rows(self, component: str, direction: str, rows: Sequence[tuple[int, Sequence[tuple]]]) -> torch.Tensor:
        """Patched metric for each row (sample, cells): the sample's base run with all of ``cells``
        patched from the same sample's source run. float32 on the CPU."""
        if not rows:
            return torch.empty(0, dtype=torch.float32, device="cpu")
        if direction == "denoise":
            base, src_run, noise = self.tokens["corrupt"], "clean", self.noise is not None
        else:
            base, src_run, noise = self.tokens["clean"], "corrupt", False
        src = self.source_acts(component, src_run)
        per_batch = self.rows_per_batch
        order = sorted(range(len(rows)), key=lambda i: (min(c[0] for c in rows[i][1]), rows[i][0], i))
        parts: list[torch.Tensor] = []
        with torch.inference_mode():
            for start in range(0, len(order), per_batch):
                chunk = order[start : start + per_batch]
                samples = torch.tensor([rows[i][0] for i in chunk], dtype=torch.long, device=base.device)
                by_layer: dict[int, list] = {}
                for r, i in enumerate(chunk):
                    s = rows[i][0]
                    for c in rows[i][1]:
                        by_layer.setdefault(c[0], []).append((r, s, c))
                hooks = [("hook_embed", self.noise_hook(samples))] if noise else []
                for l in sorted(by_layer):
                    name = hook_name(component, l)
                    hooks.append((name, _make_batch_hook(component, by_layer[l], src[name])))
                logits = self.model.run_with_hooks(base[samples], fwd_hooks=hooks)
                parts.append(self.metrics(logits[:, -1], samples.to(logits.device)))
        out = torch.empty(len(rows), dtype=torch.float32, device="cpu")
        out[torch.tensor(order, dtype=torch.long, device="cpu")] = torch.cat(parts).cpu()  # one transfer
        return out


def _make_batch_hook(component: str, entries: list, src: torch.Tensor):
    """A hook writing, into each batch row, the source activation of that row's sample.

    entries: [(row, sample, cell)]; cell = (layer, pos) or (layer, head, pos_or_None).
    src: the source run's activation at this hook point, [S, pos, ...]."""
    dev = src.device
    if component == "heads":
        whole = [(r, s, c[1]) for r, s, c in entries if c[2] is None]
        single = [(r, s, c[1], c[2]) for r, s, c in entries if c[2] is not None]
        w = torch.tensor(whole, dtype=torch.long, device=dev).reshape(-1, 3)
        o = torch.tensor(single, dtype=torch.long, device=dev).reshape(-1, 4)

        def heads_hook(act, hook=None):  # in place, as TransformerLens' patch setters do
            if w.shape[0]:
                act[w[:, 0], :, w[:, 2]] = src[w[:, 1], :, w[:, 2]].to(act.dtype)
            if o.shape[0]:
                act[o[:, 0], o[:, 3], o[:, 2]] = src[o[:, 1], o[:, 3], o[:, 2]].to(act.dtype)
            return act

        return heads_hook

    t = torch.tensor([(r, s, c[1]) for r, s, c in entries], dtype=torch.long, device=dev).reshape(-1, 3)
    rows, samples, poss = t[:, 0], t[:, 1], t[:, 2]

    def hook(act, hook=None):
        act[rows, poss] = src[samples, poss].to(act.dtype)
        return act

    return hook
