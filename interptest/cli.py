"""The ``interptest`` command: look before you claim.

    interptest map PROMPT --corrupt TEXT [--expect TOKEN] [--component C] [--model M] [--html FILE]
    interptest suggest SPEC [SPEC ...] [--model M] [-k TEXT] [--graphs DIR [--overwrite]]
    interptest features PROMPT --sae DIR|NAME [--corrupt TEXT] [--top K] [--model M]
    interptest schema
    interptest --version

``map`` prints both prompts' top predictions and a patching map in the terminal (and writes the report's
heatmap with ``--html``); ``suggest`` prints, for every behavior of the spec files, the strongest claims
that hold, as YAML to paste (it never writes the spec files; with ``--graphs DIR`` it writes each behavior's
suggested edge circuit as an EAP-IG graph file ``DIR/<behavior>.json``, replacing an existing one only with
``--overwrite``); ``features`` prints an SAE's most active
features at every token of a prompt (and, with ``--corrupt``, the features that differ most from the
corrupted prompt's), the indices feature claims name; ``schema`` prints the JSON Schema of spec files.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from interptest.errors import InterpError


def _parser() -> argparse.ArgumentParser:
    from interptest import components

    parser = argparse.ArgumentParser(
        prog="interptest",
        description="Mechanistic-interpretability claims as tests: "
        "explore with patching maps, get claim suggestions, validate specs.",
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="print the versions and exit")
    commands = parser.add_subparsers(dest="command", required=True)

    sweep = commands.add_parser("map", help="print a patching map of one prompt pair")
    sweep.add_argument("prompt", help="the clean prompt")
    sweep.add_argument("--corrupt", required=True, help="the corrupted prompt (same token count)")
    sweep.add_argument(
        "--expect",
        default=None,
        help="the expected next token, e.g. ' Hart' (mind the space); default: the clean prompt's top-1 token",
    )
    sweep.add_argument(
        "--foil",
        default=None,
        help="the other side of the logit difference (default: the corrupted prompt's top-1 token)",
    )
    sweep.add_argument("--component", default="resid_pre", choices=components.NAMES)
    sweep.add_argument(
        "--direction",
        default="denoise",
        choices=("denoise", "noise"),
        help="denoise = recovers (clean into corrupted), noise = breaks (corrupted into clean)",
    )
    sweep.add_argument("--model", default="interptest-tiny", help="model name or checkpoint directory")
    sweep.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    sweep.add_argument("--html", type=Path, default=None, help="also write the map as an HTML page")
    sweep.add_argument("--top-k", type=_positive, default=5, help="how many top predictions of each prompt to print")
    _threads_option(sweep)

    suggest = commands.add_parser("suggest", help="print the strongest claims that hold for spec files' behaviors")
    suggest.add_argument("specs", nargs="+", type=Path, help="YAML spec files")
    suggest.add_argument("--model", default=None, help="model for every behavior, overriding the specs")
    suggest.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    suggest.add_argument("--seed", type=int, default=0, help="seed of the samples prompt families draw")
    suggest.add_argument(
        "--graphs",
        type=Path,
        default=None,
        help="write each behavior's suggested edge circuit into this folder as an EAP-IG graph file <behavior>.json",
    )
    suggest.add_argument("--overwrite", action="store_true", help="with --graphs: replace existing graph files")
    suggest.add_argument(
        "-k",
        dest="select",
        action="append",
        default=None,
        metavar="TEXT",
        help="only behaviors whose name contains TEXT (case-insensitive; repeat for any of several)",
    )
    _threads_option(suggest)

    feats = commands.add_parser("features", help="print an SAE's most active features at every token of a prompt")
    feats.add_argument("prompt", help="the clean prompt")
    feats.add_argument(
        "--sae", required=True, help="an SAE directory (cfg.json + sae_weights.safetensors) or a shipped SAE"
    )
    feats.add_argument(
        "--corrupt", default=None, help="a corrupted prompt (same token count): also the features that differ"
    )
    feats.add_argument("--top", type=int, default=5, help="features shown per token and overall (default 5)")
    feats.add_argument("--model", default="interptest-tiny", help="model name or checkpoint directory")
    feats.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")

    commands.add_parser("schema", help="print the JSON Schema of spec files")
    return parser


def _version() -> str:
    """``interptest X (TransformerLens Y, transformers Z, torch W)``, read from the installed metadata
    (nothing is imported, so ``--version`` answers at once)."""
    from importlib.metadata import PackageNotFoundError, version

    from interptest.version import __version__

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    others = ", ".join(f"{label} {installed(name)}" for label, name in _LIBRARIES)
    return f"interptest {__version__} ({others})"


class _Version(argparse.Action):
    """--version on one line (argparse's own wraps it at the terminal's width)."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(_version())
        parser.exit()


_LIBRARIES = (("TransformerLens", "transformer-lens"), ("transformers", "transformers"), ("torch", "torch"))


def _positive(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}; expected a positive integer")
    return number


def _threads(text: str) -> int | None:
    """--threads as the plugin's --interp-threads: 'auto' (None: half the CPUs) or a positive integer."""
    if text == "auto":
        return None
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}; expected a positive integer or 'auto'")
    return number


def _threads_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--threads",
        type=_threads,
        default=None,
        help="torch intra-op threads (default auto: half the CPUs available, as the pytest plugin's --interp-threads)",
    )


def _map(args) -> int:
    import torch

    from interptest.api import patch_sweep, top_predictions
    from interptest.maps import render_map
    from interptest.model import configure_threads, load_model

    configure_threads(args.threads)
    model = load_model(args.model, device=args.device)
    print(f"{args.model}: top predictions")
    tops = {}
    for label, prompt in (("clean", args.prompt), ("corrupt", args.corrupt)):
        tops[label] = top_predictions(model, prompt, args.top_k)
        shown = ", ".join(f"{token!r} {prob:z.3f}" for token, prob in tops[label])
        print(f"  {label:<8}top-{args.top_k}: {shown}")
    expect = args.expect
    if expect is None:
        expect = tops["clean"][0][0]
        print(f"expect {expect!r} (the clean prompt's top-1; --expect to choose)")
    with torch.inference_mode():
        pm = patch_sweep(
            model,
            args.prompt,
            args.corrupt,
            args.component,
            expect=expect,
            foil=args.foil,
            direction=args.direction,
        )
    print(f"{args.model}: m_clean {pm.clean_metric:z.3f}, m_corrupt {pm.corrupt_metric:z.3f}, Δm {pm.delta:z.3f}")
    print("\n".join(line for line in render_map(pm) if "claimed cell" not in line))
    if args.html is not None:
        from interptest.files import atomic_write
        from interptest.maps import map_page

        args.html.parent.mkdir(parents=True, exist_ok=True)  # a missing folder is created
        atomic_write(args.html, map_page(pm, f"{pm.component} — {args.prompt!r} vs {args.corrupt!r}"))
        print(f"written: {args.html}")
    return 0


def _features(args) -> int:
    import torch

    from interptest import saes
    from interptest.model import load_model
    from interptest.zoo import shipped_sae_dir, shipped_saes

    if args.top < 1:
        raise InterpError(f"--top must be at least 1, got {args.top}")
    directory = Path(args.sae)
    if not directory.exists() and args.sae in shipped_saes():
        directory = shipped_sae_dir(args.sae)
    sae = saes.load(directory)
    model = load_model(args.model, device=args.device)
    if sae.hook_name not in getattr(model, "hook_dict", {}):
        raise InterpError(f"{directory}: its hook {sae.hook_name!r} does not exist on {args.model}")
    hook = sae.hook_name

    def features(text: str):
        ids = model.to_tokens(text)
        with torch.inference_mode():
            _, cache = model.run_with_cache(ids, names_filter=lambda name: name == hook)
        x = cache[hook][0].float().cpu()
        if x.shape[-1] != sae.d_in:
            raise InterpError(f"{directory}: d_in = {sae.d_in} does not fit {hook!r}, which is {x.shape[-1]} wide")
        return list(model.to_str_tokens(ids[0])), sae.encode(x)

    tokens, f = features(args.prompt)
    print(f"{sae.describe()}; {args.model}")
    print(f"top {args.top} features at each token of the prompt (feature index: activation):")
    for p, token in enumerate(tokens):
        values, index = f[p].topk(min(args.top, sae.d_sae))
        shown = ", ".join(f"{int(i)}: {float(v):.2f}" for v, i in zip(values, index) if float(v) > 0)
        print(f"  {p:3d} {token!r:16} {shown or '(none active)'}")
    if args.corrupt is not None:
        corrupt_tokens, g = features(args.corrupt)
        if len(corrupt_tokens) != len(tokens):
            raise InterpError(
                f"the corrupted prompt has {len(corrupt_tokens)} tokens, the prompt {len(tokens)}: positions are "
                "compared one to one"
            )
        diff = (f - g).abs()
        total = diff.sum(0)
        order = [i for i in total.argsort(descending=True).tolist() if float(total[i]) > 0][: args.top]
        print(
            f"the {len(order)} features that differ most from the corrupted prompt (Σ over tokens of |clean − corrupt|;"
        )
        print("what features(SAE)[top N] picks at every position):")
        for i in order:
            p = int(diff[:, i].argmax())
            print(
                f"  {i:5d}  Σ {float(total[i]):.2f}; most at {p} {tokens[p]!r} / {corrupt_tokens[p]!r}: "
                f"{float(f[p, i]):.2f} clean, {float(g[p, i]):.2f} corrupted"
            )
    return 0


def _suggest(args) -> int:
    from interptest.binding import bind_behavior
    from interptest.model_cache import DEFAULT_MODEL, ModelCache
    from interptest.spec import load_spec_file
    from interptest.suggest import suggest

    models = ModelCache(device=args.device, threads=args.threads)
    blocks = []
    for path in args.specs:
        behaviors = load_spec_file(path).behaviors
        if args.select:
            chosen = [b for b in behaviors if any(text.lower() in b.name.lower() for text in args.select)]
            if not chosen:
                wanted = " or ".join(f"-k {text!r}" for text in args.select)
                names = ", ".join(b.name for b in behaviors)
                raise InterpError(f"{wanted} selects no behavior of {path} (behaviors: {names})")
            behaviors = tuple(chosen)
        for behavior in behaviors:
            name = args.model or behavior.model or DEFAULT_MODEL
            beside = path.parent / name
            model = models.get(str(beside) if not args.model and beside.is_dir() else name)
            options = {"suggest_graphs": str(args.graphs), "suggest_overwrite": args.overwrite} if args.graphs else None
            blocks.append(suggest(bind_behavior(behavior, model, name, args.seed, options)))
    print("\n\n".join(blocks))
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TQDM_DISABLE", "1")
    args = _parser().parse_args(argv)
    try:
        if args.command == "schema":
            from interptest.schema import schema_text

            sys.stdout.write(schema_text())
            return 0
        if args.command == "features":
            return _features(args)
        return _map(args) if args.command == "map" else _suggest(args)
    except InterpError as error:
        print(f"interptest {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
