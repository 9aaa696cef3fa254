"""The core of the pytest plugin, free of pytest: options, which files are specs, which model a
behavior uses, the per-run model cache, and binding/running behaviors.

:mod:`interptest.plugin` hands every hook to an :class:`InterpSession` in a line or two.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path

from interptest.check import DEFAULT_MODEL, BoundBehavior, ModelCache, bind_behavior, run_behavior
from interptest.errors import InterpError, SpecError
from interptest.spec import BehaviorSpec, load_spec_file

SPEC_SUFFIXES = (".yaml", ".yml")
SPEC_DIRECTORY = "behaviors"
DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
DTYPES = ("float32", "bfloat16", "float16")


class OptionError(InterpError):
    """An option has a value interptest cannot use; the plugin raises it as a pytest.UsageError."""


@dataclass(frozen=True)
class Options:
    model: str | None = None          # --interp-model: beats every spec
    default_model: str = DEFAULT_MODEL  # ini interp_model: used when neither behavior nor file names one
    device: str = "auto"
    dtype: str = "float32"
    threads: int | None = None
    batch_size: int | None = None
    files: tuple[str, ...] = ()       # ini interp_files: replaces the default collection rule

    @staticmethod
    def validate_device(value: str) -> str:
        if value in ("auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:\d+", value):
            return value
        raise OptionError(f"--interp-device: invalid value {value!r}; allowed: {', '.join(DEVICES)}")

    @staticmethod
    def validate_dtype(value: str) -> str:
        if value in DTYPES:
            return value
        raise OptionError(f"--interp-dtype: invalid value {value!r}; allowed: {', '.join(DTYPES)}")

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


class InterpSession:
    def __init__(self, options: Options, rootpath: Path, explicit_args: list[Path]):
        self.options = options
        self.rootpath = rootpath
        self.explicit = {p.resolve() for p in explicit_args}
        device = None if options.device == "auto" else options.device
        self.models = ModelCache(device=device, dtype=options.dtype, threads=options.threads)

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

    def load_file(self, path: Path):
        return load_spec_file(path)

    def model_name(self, behavior: BehaviorSpec) -> str:
        """--interp-model > behavior > file > ini interp_model > interptest-tiny; relative checkpoint
        directories are relative to the spec file."""
        name = self.options.model or behavior.model or self.options.default_model
        if behavior.model and not self.options.model and behavior.path:
            beside = Path(behavior.path).parent / name
            if beside.is_dir():
                return str(beside)
        return name

    def bind(self, behavior: BehaviorSpec) -> BoundBehavior:
        name = self.model_name(behavior)
        try:
            model = self.models.get(name)
        except InterpError as error:
            raise SpecError(str(error), path=behavior.path, line=behavior.key_lines.get("model", behavior.line),
                            behavior=behavior.name, key="model") from None
        return bind_behavior(behavior, model, name)

    # -- running
    def run(self, bound: BoundBehavior):
        return run_behavior(bound, batch_size=self.options.batch_size)

    def default_model(self):
        return self.models.get(self.options.model or self.options.default_model)

    def close(self) -> None:
        self.models.clear()
