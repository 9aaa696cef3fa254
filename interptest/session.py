"""The core of the pytest plugin, free of pytest: options, which files are specs, which model a
behavior uses, the per-run model cache, and binding/running behaviors.

:mod:`interptest.plugin` hands every hook to an :class:`InterpSession` in a line or two.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path

from interptest import baselines, components
from interptest.binding import BoundBehavior, bind_behavior
from interptest.errors import InterpError, SpecError
from interptest.files import atomic_write
from interptest.model import device_problem, parse_device_map
from interptest.model_cache import DEFAULT_MODEL, ModelCache
from interptest.outcomes import CheckResult, run_behavior
from interptest.report import write_report
from interptest.results import behavior_record, claim_lines, map_entries, summary_line
from interptest.running import Run
from interptest.spec import BehaviorSpec, load_spec_file
from interptest.suggest import suggest
from interptest.tl_compat import bridge_class
from interptest.version import __version__

SPEC_SUFFIXES = (".yaml", ".yml")
SPEC_DIRECTORY = "behaviors"
DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
DTYPES = ("float32", "bfloat16", "float16")


class ModelSkipped(InterpError):
    """The behavior's model is not available and its spec says ``if_model_unavailable: skip``."""


class OptionError(InterpError):
    """An option has a value interptest cannot use; the plugin raises it as a pytest.UsageError."""


@dataclass(frozen=True)
class Options:
    model: str | None = None  # --interp-model: beats every spec
    default_model: str = DEFAULT_MODEL  # ini interp_model: used when neither behavior nor file names one
    device: str = "auto"
    dtype: str = "float32"
    threads: int | None = None
    batch_size: int | None = None
    files: tuple[str, ...] = ()  # ini interp_files: replaces the default collection rule
    report: str | None = None  # --interp-report DIR
    baseline_update: bool = False  # --interp-baseline-update
    baseline_tolerance: float = 0.05  # ini interp_baseline_tolerance
    suggest: bool = False  # --interp-suggest
    suggest_graphs: str | None = None  # --interp-suggest-graphs DIR: suggested edge circuits as graph files
    suggest_overwrite: bool = False  # --interp-suggest-overwrite: replace existing graph files
    report_all: bool = False  # --interp-report-all: sweep every component, not only the claimed ones
    repeat_length: int | None = None  # --interp-repeat-length: random_repeat sequences of head-score claims
    device_map: str | None = None  # --interp-device-map: a Hugging Face device_map (name or JSON object)
    random_sets: int | None = None  # --interp-random-sets: random node sets of a 'beats random' claim
    seed: int = 0  # --interp-seed: which samples prompt families draw
    shrink: bool = True  # --interp-no-shrink turns shrinking of failing family claims off
    shrink_budget: float | None = None  # --interp-shrink-budget: seconds of shrinking per behavior

    @staticmethod
    def validate_device(value: str) -> str:
        if value in ("auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:\d+", value):
            if value not in ("auto", "cpu"):  # only then is torch imported here
                problem = device_problem(value)
                if problem:
                    raise OptionError(f"--interp-device {value}: {problem.removeprefix(f'device {value!r}: ')}")
            return value
        raise OptionError(f"--interp-device: invalid value {value!r}; allowed: {', '.join(DEVICES)}")

    @staticmethod
    def validate_device_map(value) -> str | None:
        """--interp-device-map: checked here, so a malformed map is a usage error naming the option (not an
        error of the first spec whose model loads); kept as given, the loader parses it again."""
        if value is None or not str(value).strip():
            return None
        try:
            parse_device_map(value)
        except ValueError as problem:
            raise OptionError(f"--interp-device-map: {problem}") from None
        return value

    @staticmethod
    def validate_dtype(value: str) -> str:
        if value in DTYPES:
            return value
        raise OptionError(f"--interp-dtype: invalid value {value!r}; allowed: {', '.join(DTYPES)}")

    @staticmethod
    def integer(value, option: str) -> int:
        try:
            return int(value)
        except (TypeError, ValueError):
            raise OptionError(f"{option}: invalid value {value!r}; expected an integer") from None

    @staticmethod
    def seconds(value, option: str) -> float | None:
        if value is None or value == "":
            return None
        return Options.non_negative(value, option, "a number of seconds >= 0")

    @staticmethod
    def tolerance(value) -> float:
        return Options.non_negative(value, "--interp-baseline-tolerance", "a number >= 0")

    @staticmethod
    def non_negative(value, option: str, expected: str) -> float:
        """``value`` as a float >= 0 (NaN refused); an OptionError naming ``option`` and ``expected`` otherwise."""
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = -1.0
        if not number >= 0:
            raise OptionError(f"{option}: invalid value {value!r}; expected {expected}")
        return number

    @staticmethod
    def report_directory(value) -> str | None:
        """--interp-report names a directory; an existing file there is refused before any test runs."""
        if not value:
            return None
        if Path(value).exists() and not Path(value).is_dir():
            raise OptionError(
                f"--interp-report: {value!r} is an existing file; the report is a directory (results.json and "
                "report.html are written into it): name a directory"
            )
        return value

    @staticmethod
    def positive_int(value, option: str, allow_auto: bool = False) -> int | None:
        if value is None or value == "" or (allow_auto and value == "auto"):
            return None
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = 0
        if number < 1:
            extra = " or 'auto'" if allow_auto else ""
            raise OptionError(f"{option}: invalid value {value!r}; expected a positive integer{extra}")
        return number


class SharedValidation:
    """Binding under pytest-xdist, where every worker collects every behavior: each model's behaviors are
    bound (validated) at collection by one worker only, which writes its verdicts into a directory the
    controller shares; the other workers read them, so a spec the model rejects is a collection error on
    every worker alike, and they load a model only when they run one of its behaviors (binding at setup).

    The validator of a model is its index among the run's sorted model names modulo the number of
    workers. A worker that waits for a validator that died, or that has not started validating within
    ``timeout`` seconds, validates that model itself."""

    def __init__(self, directory: str, worker: int, workers: int, timeout: float = 120.0):
        self.directory, self.worker, self.workers, self.timeout = Path(directory), worker, max(1, workers), timeout

    def _file(self, model: str, kind: str) -> Path:
        import hashlib

        return self.directory / f"{hashlib.sha256(model.encode()).hexdigest()[:20]}.{kind}"

    def run(self, session: InterpSession, behaviors: dict[str, BehaviorSpec]) -> tuple[dict, dict]:
        """Verdicts {nodeid: {} | {"error": message} | {"skip": reason}} of every behavior, and the
        behaviors this worker bound itself {nodeid: BoundBehavior}."""
        import json
        import os
        import time

        by_model: dict[str, dict[str, BehaviorSpec]] = {}
        for nodeid, behavior in behaviors.items():
            by_model.setdefault(session.model_name(behavior), {})[nodeid] = behavior
        models = sorted(by_model)
        verdicts: dict = {}
        bound: dict = {}

        def validate(model: str) -> None:
            found: dict[str, dict] = {}
            for nodeid, behavior in by_model[model].items():
                try:
                    bound[nodeid] = session.bind(behavior)
                    found[nodeid] = {}
                except ModelSkipped as skipped:
                    found[nodeid] = {"skip": str(skipped)}
                except InterpError as error:
                    found[nodeid] = {"error": str(error)}
            atomic_write(self._file(model, "json"), json.dumps(found))
            verdicts.update(found)

        mine = [m for i, m in enumerate(models) if i % self.workers == self.worker]
        for model in mine:
            atomic_write(self._file(model, "pid"), str(os.getpid()))
            validate(model)
        others = [m for m in models if m not in mine]
        if others:
            # This worker will likely run some of these behaviors: import the stack while the validators bind.
            bridge_class()
        start = time.monotonic()
        for model in others:
            while True:
                path = self._file(model, "json")
                if path.is_file():
                    verdicts.update(json.loads(path.read_text(encoding="utf-8")))
                    break
                pid = self._file(model, "pid")
                if _dead(pid) or (not pid.is_file() and time.monotonic() - start > self.timeout):
                    validate(model)
                    break
                time.sleep(0.05)
        return verdicts, bound


def _dead(pid_file: Path) -> bool:
    """Whether the process that wrote ``pid_file`` has exited (False while the file does not exist)."""
    import os

    try:
        pid = int(pid_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


class InterpSession:
    def __init__(self, options: Options, rootpath: Path, explicit_args: list[Path]):
        self.options = options
        self.rootpath = rootpath
        self.explicit = {p.resolve() for p in explicit_args}
        device = None if options.device == "auto" else options.device
        self.models = ModelCache(
            device=device, dtype=options.dtype, threads=options.threads, device_map=options.device_map
        )
        self.records: list[dict] = []
        self._baselines: dict[str, dict] = {}
        self.unclaimed: set[str] = set()  # YAML files with a 'behaviors' list that the collection rule skipped
        self.collected = 0  # behaviors collected in this process
        self.shared: SharedValidation | None = None  # set on xdist workers: bind at setup, validate shared

    # -- collection
    def is_spec_file(self, path: Path) -> bool:
        if path.suffix not in SPEC_SUFFIXES:
            return False
        if path.resolve() in self.explicit:
            return True
        try:
            relative = path.resolve().relative_to(self.rootpath.resolve())
        except ValueError:
            relative = path
        if self.options.files:
            return any(fnmatch.fnmatch(relative.as_posix(), glob) or path.match(glob) for glob in self.options.files)
        return SPEC_DIRECTORY in relative.parts[:-1]

    def note_unclaimed(self, path: Path) -> None:
        """Remember a YAML file that looks like a spec (a top-level 'behaviors' key) but is not collected."""
        if path.suffix not in SPEC_SUFFIXES:
            return
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                head = handle.read(65536)
        except OSError:
            return
        if re.search(r"^behaviors\s*:", head, re.MULTILINE):
            try:
                shown = path.resolve().relative_to(self.rootpath.resolve()).as_posix()
            except ValueError:
                shown = str(path)
            self.unclaimed.add(shown)

    def unclaimed_hint(self) -> list[str]:
        """When no behavior was collected but spec-like YAML files were skipped: the collection rule."""
        if not self.unclaimed or self.collected or self.records:
            return []
        files = sorted(self.unclaimed)
        first = files[0]
        folder = first.rsplit("/", 1)[0] if "/" in first else "."
        return [
            f"interptest: {len(files)} YAML file(s) with a 'behaviors' list were not collected as specs: "
            f"{', '.join(files[:5])}{' …' if len(files) > 5 else ''}",
            f"  a spec is collected when it is inside a directory named '{SPEC_DIRECTORY}', named on the command "
            f"line (pytest {first}), or matched by the ini key interp_files (e.g. interp_files = {folder}/*.yaml)",
        ]

    def load_file(self, path: Path):
        """The file's valid behaviors, the others' errors in ``errors`` (one bad behavior hides none)."""
        return load_spec_file(path, keep_going=True)

    def model_name(self, behavior: BehaviorSpec) -> str:
        """--interp-model > behavior > file > ini interp_model > interptest-tiny; relative checkpoint
        directories are relative to the spec file."""
        name = self.options.model or behavior.model or self.options.default_model
        if behavior.model and not self.options.model and behavior.path:
            beside = Path(behavior.path).parent / name
            if beside.is_dir():
                return str(beside)
        return name

    def model_source(self, behavior: BehaviorSpec) -> str | None:
        """Who chose the behavior's model, for messages: None when the spec's own 'model' key did."""
        if self.options.model:
            return "--interp-model"
        if behavior.model:
            return None
        return "ini option interp_model" if self.options.default_model != DEFAULT_MODEL else "the default model"

    def bind(self, behavior: BehaviorSpec) -> BoundBehavior:
        name = self.model_name(behavior)
        try:
            model = self.models.get(name)
        except InterpError as error:
            if behavior.if_model_unavailable == "skip":
                raise ModelSkipped(str(error)) from None
            source = self.model_source(behavior)
            if source is not None:  # the spec did not name this model: blame what did
                raise SpecError(
                    f"{source} {name!r}: {error}", path=behavior.path, line=behavior.line, behavior=behavior.name
                ) from None
            raise SpecError(
                str(error),
                path=behavior.path,
                line=behavior.key_lines.get("model", behavior.line),
                behavior=behavior.name,
                key="model",
            ) from None
        return bind_behavior(behavior, model, name, self.options.seed, self.run_options())

    def run_options(self) -> dict:
        """The settings claim kinds read at run time (BoundBehavior.options)."""
        return {
            "repeat_length": self.options.repeat_length,
            "random_sets": self.options.random_sets,
            "suggest_graphs": self.options.suggest_graphs,
            "suggest_overwrite": self.options.suggest_overwrite,
        }

    # -- running
    def run(self, bound: BoundBehavior):
        result = run_behavior(
            bound,
            batch_size=self.options.batch_size,
            shrink=self.options.shrink,
            shrink_budget=self.options.shrink_budget,
        )
        result.draw = baselines.draw(bound.seed, [s.prompt for s in bound.samples]) if bound.spec.family else {}
        if self.options.report_all:
            self._sweep_every_component(bound, result)
        if not self.options.baseline_update:
            self._compare_baseline(result)
        if self.options.suggest:
            result.suggestion = suggest(bound, batch_size=self.options.batch_size)
        return result

    def _sweep_every_component(self, bound: BoundBehavior, result) -> None:
        """--interp-report-all: the denoising map of every component the model has, beside the claimed ones."""
        import torch

        if bound.corrupt_ids is None:
            return
        with torch.inference_mode():
            run = Run(bound, self.options.batch_size)
            if run.foil_problem():
                return
            for name in components.available(getattr(bound.model, "hook_dict", {})):
                if (name, "denoise") not in result.maps:
                    run.sweep(name, "denoise")
        result.maps.update({key: value for key, value in run.maps.items() if key not in result.maps})

    def _compare_baseline(self, result) -> None:
        behavior = result.behavior
        if behavior.path not in self._baselines:
            try:
                self._baselines[behavior.path] = baselines.load(behavior.path)
            except ValueError as error:
                raise SpecError(str(error), path=behavior.path) from None
        stored = self._baselines[behavior.path].get(behavior.name)
        passed, detail = baselines.compare(
            stored,
            map_entries(result),
            result.labels or result.tokens,
            self.options.baseline_tolerance,
            claims=baselines.claim_values(result.checks),
            draw=result.draw,
        )
        result.baseline = {"status": "missing" if stored is None else "ok" if passed else "moved", "detail": detail}
        if stored is not None:
            result.checks.append(
                CheckResult(
                    f"claims and maps match the baseline (tolerance {self.options.baseline_tolerance:g})",
                    passed,
                    None,
                    detail,
                )
            )

    def record(self, behavior: BehaviorSpec, nodeid: str, result, report) -> dict | None:
        """The record of one behavior, from the report phase that decides its outcome."""
        if report.when == "call" and result is not None:
            outcome = None
        elif report.when == "setup" and not report.passed:
            outcome = "skipped" if report.skipped else "error"
        else:
            return None
        if hasattr(report, "wasxfail"):
            outcome = "xfailed" if report.skipped else "xpassed"
        elif report.skipped:
            outcome = "skipped"
        return dict(behavior_record(behavior, nodeid, self.model_name(behavior), outcome, result))

    def add_record(self, record: dict) -> None:
        self.records.append(record)

    def finish(self, verbose: bool = False) -> tuple[list[str], str | None]:
        """Terminal summary lines (under -v each check's measured value too), and the report directory if
        one was written."""
        records = sorted(self.records, key=lambda r: r["nodeid"])
        notes = self._baseline_notes(records)
        written = None
        if self.options.report and records:
            write_report(records, self.options.report, version=__version__)
            written = self.options.report
        suggestions = [r["suggestion"] for r in records if r.get("suggestion")]
        lines = []
        for record in records:
            lines.append(summary_line(record))
            if verbose:
                lines.extend(claim_lines(record))
        return lines + notes + suggestions + self.unclaimed_hint(), written

    def _baseline_notes(self, records: list[dict]) -> list[str]:
        """Write baselines (--interp-baseline-update) or list missing and unused baseline entries."""
        by_file: dict[Path, dict[str, dict]] = {}
        for record in records:
            if record["outcome"] in ("skipped", "error"):
                continue
            spec_file, name = record["nodeid"].split("::", 1)
            by_file.setdefault(self.rootpath / spec_file, {})[name] = record
        notes, never_recorded = [], []
        for spec_file, ran in sorted(by_file.items()):
            if self.options.baseline_update:
                entries = {name: baselines.entry(r) for name, r in ran.items() if r["maps"] or r["claims"]}
                if entries:
                    path = baselines.update(spec_file, entries)
                    notes.append(f"baseline updated: {path} ({len(entries)} behavior(s))")
                continue
            try:
                stored = baselines.load(spec_file)
            except ValueError as error:
                notes.append(str(error))
                continue
            missing = sorted(n for n, r in ran.items() if (r["maps"] or r["claims"]) and n not in stored)
            # Unused: no behavior of the spec has the name -- not merely deselected (-k, a node id) this time.
            unused = sorted(set(stored) - self._behavior_names(spec_file, ran))
            if missing and not baselines.baseline_path(spec_file).exists():
                never_recorded.append(spec_file)
            elif missing:
                notes.append(f"no baseline for {', '.join(missing)} in {baselines.baseline_path(spec_file)}")
            if unused:
                notes.append(
                    f"unused baseline entries in {baselines.baseline_path(spec_file)}: {', '.join(unused)} "
                    f"(no behavior of {spec_file.name} has that name)"
                )
        if never_recorded:
            notes.append(
                f"no baselines recorded for {len(never_recorded)} spec file(s) (--interp-baseline-update records them)"
            )
        return notes

    @staticmethod
    def _behavior_names(spec_file: Path, ran: dict) -> set[str]:
        """Every behavior name of a spec file, selected or not (the names that ran if it cannot be read)."""
        try:
            return {behavior.name for behavior in load_spec_file(spec_file).behaviors}
        except (InterpError, OSError):
            return set(ran)

    def default_model(self):
        return self.models.get(self.options.model or self.options.default_model)

    def close(self) -> None:
        self.models.clear()
