"""The circuit engine's forwards (issue 23): one cached forward per prompt set however many hooks a claim
needs, the all-ablated run once per ablation, and no forward with more rows than the engine's budget
(paths included: their two steps share each forward) — with the same values as one row at a time.

These count the bridge's forwards, so they run the hook engine (``engine='hooks'``); where node sets run on
the fast engine (the default where it covers the model), the bridge runs only the cached clean and
corrupted forwards (its self-check reads their logits) and the rest is counted in test_fast_circuits.py."""

import torch
from test_claims_circuit import pairs

import tinymodels
from interptest.patching.paths import CircuitPatcher


class _Rows:
    """Counts the forwards of ``model`` and their rows (at hook_embed, which every forward passes)."""

    def __init__(self, model):
        self.model, self.sizes = model, []

    def __enter__(self):
        def count(act, hook=None):
            self.sizes.append(int(act.shape[0]))
            return act

        self.model.add_hook("hook_embed", count)
        return self

    def __exit__(self, *exc):
        self.model.reset_hooks()


def _engine(model, batch_size=None, S=3, engine="hooks"):
    clean, corrupt, expect, foil = pairs(model, S=S)
    return CircuitPatcher(model, clean, corrupt, expect, foil, batch_size=batch_size, engine=engine)


def test_every_source_of_a_prompt_set_comes_from_one_forward_and_the_empty_run_is_kept():
    model = tinymodels.tiny_model("gpt2")
    engine = _engine(model)
    L = int(model.cfg.n_layers)
    kept = [("heads", (0, 1, None)), ("mlp_out", (L - 1, None))]
    with torch.inference_mode(), _Rows(model) as rows:
        engine.faithfulness([kept], "mean")  # every hook_z and hook_mlp_out of the clean run: one forward
        assert len(rows.sizes) == 2  # the clean run's cached forward, then the sets' (empty run included)
        engine.faithfulness([kept, []], "mean")
        assert len(rows.sizes) == 3  # the empty run and the clean sources are not recomputed
        engine.path([[("heads", (0, 2, None))]], [[("k", 1, 0, None)]], "corrupt", "clean")
        assert len(rows.sizes) == 5  # the corrupted run's cached forward, then both path steps in one


def test_no_forward_exceeds_the_row_budget_and_the_values_equal_one_row_at_a_time():
    model = tinymodels.tiny_model("gpt2")
    senders = [[("heads", (0, h, None))] for h in range(3)] + [[("mlp_out", (0, None))]]
    receivers = [[("q", 1, 0, None)], [("v", 1, 2, None), ("k", 1, 1, -1)], [("logits", None)]]
    sets = [[("heads", (l, h, None))] for l in range(2) for h in range(2)]
    results = {}
    for budget in (None, 1, 2, 5):
        engine = _engine(model, batch_size=budget)
        with torch.inference_mode(), _Rows(model) as rows:
            path = engine.path(senders, receivers, "corrupt", "clean")
            faithful = engine.faithfulness(sets, "resample")
        assert max(rows.sizes) <= max(2, engine.rows_per_batch)  # a path needs its two rows together
        results[budget] = path, faithful
    for budget in (1, 2, 5):
        for ours, reference in zip(results[budget], results[None]):
            assert torch.allclose(ours, reference, atol=1e-5, rtol=0)


def test_on_the_fast_engine_node_sets_take_no_bridge_forward_but_the_cached_runs():
    model = tinymodels.tiny_model("gpt2")
    engine = _engine(model, engine="auto")
    L = int(model.cfg.n_layers)
    kept = [("heads", (0, 1, None)), ("mlp_out", (L - 1, None))]
    with torch.inference_mode(), _Rows(model) as rows:
        engine.faithfulness([kept], "mean")
        engine.faithfulness([kept, []], "resample")
        engine.patch_sets([kept], "corrupt", "clean")
    assert rows.sizes == [3, 3]  # the clean and the corrupted run, one forward each (the self-check's logits)
    assert engine.engine_used() == "fast"
