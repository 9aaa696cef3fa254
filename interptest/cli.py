"""The ``interptest`` command: look before you claim.

    interptest map PROMPT --corrupt TEXT --expect TOKEN [--component C] [--model M] [--html FILE]
    interptest suggest SPEC [SPEC ...] [--model M] [--graphs DIR [--overwrite]]
    interptest schema

``map`` prints a patching map in the terminal (and writes the report's heatmap with ``--html``);
``suggest`` prints, for every behavior of the spec files, the strongest claims that hold, as YAML to
paste (it never writes the spec files; with ``--graphs DIR`` it writes each behavior's suggested edge circuit
as an EAP-IG graph file ``DIR/<behavior>.json``, replacing an existing one only with ``--overwrite``);
``schema`` prints the JSON Schema of spec files.
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
    commands = parser.add_subparsers(dest="command", required=True)

    sweep = commands.add_parser("map", help="print a patching map of one prompt pair")
    sweep.add_argument("prompt", help="the clean prompt")
    sweep.add_argument("--corrupt", required=True, help="the corrupted prompt (same token count)")
    sweep.add_argument("--expect", required=True, help="the expected next token, e.g. ' Hart' (mind the space)")
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

    commands.add_parser("schema", help="print the JSON Schema of spec files")
    return parser


def _map(args) -> int:
    import torch

    from interptest.api import patch_sweep
    from interptest.maps import render_map
    from interptest.model import load_model

    model = load_model(args.model, device=args.device)
    with torch.inference_mode():
        pm = patch_sweep(
            model,
            args.prompt,
            args.corrupt,
            args.component,
            expect=args.expect,
            foil=args.foil,
            direction=args.direction,
        )
    print(f"{args.model}: m_clean {pm.clean_metric:.3f}, m_corrupt {pm.corrupt_metric:.3f}, Δm {pm.delta:.3f}")
    print("\n".join(line for line in render_map(pm) if "claimed cell" not in line))
    if args.html is not None:
        from interptest.files import atomic_write
        from interptest.maps import map_page

        args.html.parent.mkdir(parents=True, exist_ok=True)  # a missing folder is created
        atomic_write(args.html, map_page(pm, f"{pm.component} — {args.prompt!r} vs {args.corrupt!r}"))
        print(f"written: {args.html}")
    return 0


def _suggest(args) -> int:
    from interptest.binding import bind_behavior
    from interptest.model_cache import DEFAULT_MODEL, ModelCache
    from interptest.spec import load_spec_file
    from interptest.suggest import suggest

    models = ModelCache(device=args.device)
    blocks = []
    for path in args.specs:
        for behavior in load_spec_file(path).behaviors:
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
        return _map(args) if args.command == "map" else _suggest(args)
    except InterpError as error:
        print(f"interptest {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
