"""Train a shipped SAE on a shipped model's residual stream::

    python -m interptest.zoo.train_sae --out interptest/zoo/saes/tiny-res1     # interptest-tiny, blocks.1
    python -m interptest.zoo.train_sae --model interptest-ioi --hook blocks.3.hook_resid_pre \
        --out interptest/zoo/saes/ioi-res3

A standard (ReLU) SAE in SAELens's layout (cfg.json + sae_weights.safetensors, loadable by
``sae_lens.SAE.load_from_disk`` and by :func:`interptest.saes.load`), trained on activations of
documents from the model's own synthetic corpus (:mod:`interptest.zoo.corpus`, a different seed from
the model's training), BOS positions excluded. Loss: ‖x̃ − x̃̂‖² + λ Σ_i f_i ‖W_dec,i‖ on x̃ = x / c
(c: the mean activation norm / √d_in), with Adam; the scale c is folded into the saved weights, so the
files need no normalization (``normalize_activations: none``). Deterministic for a seed (one thread,
deterministic algorithms). Writes training_info.json (the arguments, L0, explained variance and the
fraction of dead features on held-out documents) beside the weights.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from interptest import saes
from interptest.model import load_model
from interptest.zoo.train import CORPORA

HOOK = "blocks.1.hook_resid_pre"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="interptest-tiny", choices=("interptest-tiny", "interptest-ioi"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hook", default=HOOK)
    p.add_argument("--d-sae", type=int, default=512)
    p.add_argument("--docs", type=int, default=3000, help="training documents (64 tokens each)")
    p.add_argument("--eval-docs", type=int, default=300)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--l1", type=float, default=20.0)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def activations(model, seed: int, n_docs: int, hook: str, ctx: int = 64, corpus: str = "tiny"):
    """[tokens, d_model] activations at ``hook`` of ``n_docs`` documents of the model's own corpus (BOS
    positions left out)."""
    import torch

    gen = CORPORA[corpus](seed)
    rows = []
    for _ in range(n_docs):
        ids = model.to_tokens(gen.document(4))[:, :ctx]
        rows.append(ids)
    out = []
    with torch.no_grad():
        for start in range(0, len(rows), 64):
            chunk = rows[start : start + 64]
            for ids in chunk:
                _, cache = model.run_with_cache(ids, names_filter=lambda name: name == hook)
                out.append(cache[hook][0, 1:].float())
    return torch.cat(out)


def train(args) -> dict:
    import torch
    from safetensors.torch import save_file

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    t0 = time.perf_counter()
    model = load_model(args.model)
    corpus = "ioi" if args.model == "interptest-ioi" else "tiny"
    x = activations(model, 1000 + args.seed, args.docs, args.hook, corpus=corpus)
    x_eval = activations(model, 2000 + args.seed, args.eval_docs, args.hook, corpus=corpus)
    d_in = x.shape[1]
    scale = float(x.norm(dim=-1).mean()) / d_in**0.5
    xs = x / scale
    g = torch.Generator().manual_seed(args.seed)
    w_dec = torch.randn(args.d_sae, d_in, generator=g)
    w_dec = 0.1 * w_dec / w_dec.norm(dim=-1, keepdim=True)
    params = {
        "W_dec": w_dec.clone().requires_grad_(True),
        "W_enc": w_dec.T.clone().contiguous().requires_grad_(True),
        "b_enc": torch.zeros(args.d_sae, requires_grad=True),
        "b_dec": xs.mean(0).clone().requires_grad_(True),
    }
    opt = torch.optim.Adam(params.values(), lr=args.lr)
    log = []
    for step in range(args.steps):
        idx = torch.randint(0, xs.shape[0], (args.batch,), generator=g)
        batch = xs[idx]
        f = torch.relu((batch - params["b_dec"]) @ params["W_enc"] + params["b_enc"])
        recon = f @ params["W_dec"] + params["b_dec"]
        mse = ((recon - batch) ** 2).sum(-1).mean()
        l1_coef = args.l1 * min(1.0, (step + 1) / (args.steps * 0.05))  # warm-up of the sparsity penalty
        sparsity = (f * params["W_dec"].norm(dim=-1)).sum(-1).mean()
        loss = mse + l1_coef * sparsity / d_in**0.5
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 500 == 0 or step == args.steps - 1:
            l0 = float((f > 0).float().sum(-1).mean())
            log.append({"step": step, "mse": round(float(mse.detach()), 5), "l0": round(l0, 2)})
            print(log[-1], flush=True)
    with torch.no_grad():
        weights = {
            "W_enc": (params["W_enc"] / scale).contiguous(),
            "b_enc": params["b_enc"].clone(),
            "W_dec": (params["W_dec"] * scale).contiguous(),
            "b_dec": (params["b_dec"] * scale).clone(),
        }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "architecture": "standard",
        "d_in": d_in,
        "d_sae": args.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": "6.0.0",
            "model_name": args.model,
            "hook_name": args.hook,
            "hook_head_index": None,
            "prepend_bos": True,
            "context_size": 64,
        },
    }
    (out / saes.CFG_FILENAME).write_text(json.dumps(config, indent=2) + "\n")
    save_file(weights, str(out / saes.WEIGHTS_FILENAME))
    sae = saes.load(out)
    f_eval = sae.encode(x_eval)
    recon = sae.decode(f_eval)
    info = {
        "args": vars(args),
        "torch_version": torch.__version__,
        "train_tokens": int(x.shape[0]),
        "eval_tokens": int(x_eval.shape[0]),
        "scale": scale,
        "l0": round(saes.l0(f_eval), 3),
        "explained_variance": round(saes.explained_variance(x_eval, recon), 4),
        "dead_fraction": round(float(((f_eval > 0).sum(0) == 0).float().mean()), 4),
        "log": log,
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv=None) -> int:
    info = train(parse_args(argv))
    print(json.dumps({k: v for k, v in info.items() if k != "log"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
