"""The pytest plugin: YAML behavior specs become test items. Thin by design: every hook hands its
work to :class:`interptest.session.InterpSession`. The only module of interptest that imports pytest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from interptest.errors import InterpError, SpecError, combined

OPTION_MODEL = "interp_model"
OPTION_DEVICE = "interp_device"
OPTION_DTYPE = "interp_dtype"
OPTION_THREADS = "interp_threads"
OPTION_BATCH_SIZE = "interp_batch_size"
OPTION_REPORT = "interp_report"
OPTION_BASELINE_UPDATE = "interp_baseline_update"
OPTION_BASELINE_TOLERANCE = "interp_baseline_tolerance"
OPTION_SUGGEST = "interp_suggest"
OPTION_SEED = "interp_seed"
OPTION_REPEAT_LENGTH = "interp_repeat_length"
OPTION_DEVICE_MAP = "interp_device_map"
OPTION_REPORT_ALL = "interp_report_all"
OPTION_RANDOM_SETS = "interp_random_sets"
OPTION_SHRINK_BUDGET = "interp_shrink_budget"
OPTION_NO_SHRINK = "interp_no_shrink"
OPTION_SUGGEST_GRAPHS = "interp_suggest_graphs"
OPTION_SUGGEST_OVERWRITE = "interp_suggest_overwrite"
INI_FILES = "interp_files"

_OPTIONS = {
    # dest: (help, default)
    OPTION_MODEL: (
        "model for every behavior, overriding the specs: a name (gpt2) or a checkpoint directory; "
        "the ini key sets the default for specs that name none",
        "interptest-tiny",
    ),
    OPTION_DEVICE: ("device to run models on: auto, cpu, cuda, cuda:N, mps", "auto"),
    OPTION_DEVICE_MAP: (
        "a Hugging Face device_map for models larger than one device: auto, balanced, sequential, or a JSON "
        'object of module name to device, e.g. {"": "cuda:0"} (replaces --interp-device for loading)',
        "",
    ),
    OPTION_DTYPE: ("model dtype: float32, bfloat16, float16", "float32"),
    OPTION_THREADS: ("torch intra-op threads (default: auto, at most the CPUs available)", "auto"),
    OPTION_BATCH_SIZE: ("patched rows per forward pass; bounds memory (default: chosen by the engine)", ""),
    OPTION_REPORT: ("write results.json and report.html (heatmaps) into this directory", ""),
    OPTION_BASELINE_TOLERANCE: ("how far a map cell may move from its baseline (default 0.05)", "0.05"),
    OPTION_SEED: ("seed of the samples drawn for prompt families and of noise corruptions (default 0)", "0"),
    OPTION_REPEAT_LENGTH: (
        "length of the random token sequence that head-score claims 'on random_repeat' repeat twice (default 20)",
        "20",
    ),
    OPTION_RANDOM_SETS: (
        "how many random node sets of the same composition a 'beats random' claim is compared with (default 200)",
        "200",
    ),
    OPTION_SHRINK_BUDGET: (
        "seconds per behavior that shrinking failing family claims to a minimal instance may take (default 30; "
        "0: report at once that it was not shrunk)",
        "30",
    ),
}
_SESSION_KEY: pytest.StashKey[Any] = pytest.StashKey()  # the run's InterpSession


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("interptest", "interpretability behavior specs")
    for dest, (help_text, default) in _OPTIONS.items():
        group.addoption("--" + dest.replace("_", "-"), dest=dest, default=None, help=help_text)
        parser.addini(dest, help_text, default=default)
    group.addoption(
        "--interp-baseline-update",
        dest=OPTION_BASELINE_UPDATE,
        action="store_true",
        default=None,
        help="write each behavior's patching maps to __baselines__/<spec>.json beside its spec",
    )
    parser.addini(
        OPTION_BASELINE_UPDATE, "always update baselines (see --interp-baseline-update)", type="bool", default=False
    )
    group.addoption(
        "--interp-suggest",
        dest=OPTION_SUGGEST,
        action="store_true",
        default=None,
        help="print, per behavior, the strongest localization claims that hold, as YAML to paste",
    )
    parser.addini(OPTION_SUGGEST, "always print suggested claims (see --interp-suggest)", type="bool", default=False)
    group.addoption(
        "--interp-suggest-graphs",
        dest=OPTION_SUGGEST_GRAPHS,
        default=None,
        metavar="DIR",
        help="with --interp-suggest: write each behavior's suggested edge circuit into DIR as an EAP-IG graph "
        "file <behavior>.json, which the suggested claims name",
    )
    parser.addini(OPTION_SUGGEST_GRAPHS, "folder of suggested edge circuits (see --interp-suggest-graphs)", default="")
    group.addoption(
        "--interp-suggest-overwrite",
        dest=OPTION_SUGGEST_OVERWRITE,
        action="store_true",
        default=None,
        help="with --interp-suggest-graphs: replace existing graph files (else they are kept)",
    )
    parser.addini(
        OPTION_SUGGEST_OVERWRITE,
        "replace suggested graph files (see --interp-suggest-overwrite)",
        type="bool",
        default=False,
    )
    group.addoption(
        "--interp-report-all",
        dest=OPTION_REPORT_ALL,
        action="store_true",
        default=None,
        help="sweep every component of every behavior with a corruption, so that the report draws "
        "every map, not only those of the claimed components",
    )
    parser.addini(
        OPTION_REPORT_ALL, "always sweep every component (see --interp-report-all)", type="bool", default=False
    )
    group.addoption(
        "--interp-no-shrink",
        dest=OPTION_NO_SHRINK,
        action="store_true",
        default=None,
        help="do not shrink failing family claims to a minimal instance",
    )
    parser.addini(
        OPTION_NO_SHRINK, "never shrink failing family claims (see --interp-no-shrink)", type="bool", default=False
    )
    parser.addini(
        INI_FILES,
        "glob patterns of spec files; replaces the default rule (YAML files inside a 'behaviors' directory)",
        type="linelist",
        default=[],
    )


def _option(config: pytest.Config, dest: str):
    """Command line beats the ini file, which beats the default."""
    value = config.getoption(dest)
    return value if value is not None else config.getini(dest)


def _suggest_graphs(config: pytest.Config) -> str | None:
    """The folder of suggested graph files, relative to where pytest was invoked (flag) or the rootdir (ini)."""
    flag = config.getoption(OPTION_SUGGEST_GRAPHS)
    if flag:
        return str(Path(config.invocation_params.dir, flag))
    ini = config.getini(OPTION_SUGGEST_GRAPHS)
    return str(Path(config.rootpath, ini)) if ini else None


def pytest_configure(config: pytest.Config) -> None:
    from interptest.session import InterpSession, OptionError, Options

    config.addinivalue_line("markers", "interp_model(name): the model an interptest behavior runs on")
    config.addinivalue_line("markers", "xdist_group(name): pytest-xdist --dist loadgroup runs a group on one worker")
    try:
        options = Options(
            model=config.getoption(OPTION_MODEL),
            default_model=config.getini(OPTION_MODEL) or "interptest-tiny",
            device=Options.validate_device(_option(config, OPTION_DEVICE)),
            device_map=Options.validate_device_map(_option(config, OPTION_DEVICE_MAP)),
            dtype=Options.validate_dtype(_option(config, OPTION_DTYPE)),
            threads=Options.positive_int(_option(config, OPTION_THREADS), "--interp-threads", allow_auto=True),
            batch_size=Options.positive_int(_option(config, OPTION_BATCH_SIZE), "--interp-batch-size"),
            files=tuple(config.getini(INI_FILES)),
            report=Options.report_directory(_option(config, OPTION_REPORT)),
            baseline_update=bool(_option(config, OPTION_BASELINE_UPDATE)),
            baseline_tolerance=Options.tolerance(_option(config, OPTION_BASELINE_TOLERANCE)),
            suggest=bool(_option(config, OPTION_SUGGEST)),
            suggest_graphs=_suggest_graphs(config),
            suggest_overwrite=bool(_option(config, OPTION_SUGGEST_OVERWRITE)),
            report_all=bool(_option(config, OPTION_REPORT_ALL)),
            seed=Options.integer(_option(config, OPTION_SEED), "--interp-seed"),
            repeat_length=Options.positive_int(_option(config, OPTION_REPEAT_LENGTH), "--interp-repeat-length"),
            random_sets=Options.positive_int(_option(config, OPTION_RANDOM_SETS), "--interp-random-sets"),
            shrink=not _option(config, OPTION_NO_SHRINK),
            shrink_budget=Options.seconds(_option(config, OPTION_SHRINK_BUDGET), "--interp-shrink-budget"),
        )
    except OptionError as error:
        raise pytest.UsageError(str(error)) from None
    explicit = [
        Path(config.invocation_params.dir, arg.split("::")[0])
        for arg in config.invocation_params.args
        if not arg.startswith("-")
    ]
    session = config.stash[_SESSION_KEY] = InterpSession(options, config.rootpath, explicit)
    worker = getattr(config, "workerinput", None)
    if worker is not None and Path(worker.get("interptest_share", "")).is_dir():
        # An xdist worker on the controller's machine: bind at setup, validate once per model (SharedValidation).
        from interptest.session import SharedValidation

        session.shared = SharedValidation(
            worker["interptest_share"], int(worker["workerid"].lstrip("gw") or 0), int(worker.get("workercount", 1))
        )
    if worker is None:
        config.pluginmanager.register(_Reporter(session), "interptest-reporter")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistHooks(session), "interptest-xdist")


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(_SESSION_KEY, None)
    if session is not None and not hasattr(config, "workerinput"):  # an xdist worker exits right after: no gc
        session.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if isinstance(item, BehaviorItem):
        # An attribute of the report travels from xdist workers to the controller with it.
        record = _session(item.config).record(item.behavior, report.nodeid, item.result, report)
        report.interptest = record
        if record is not None:
            # JUnit XML takes the properties of the teardown report, which copies the item's.
            from interptest.results import junit_properties

            item.user_properties.extend(junit_properties(record))
    return report


class _Reporter:
    """Gathers behavior records on the process that reports (the xdist controller, or the only one)."""

    def __init__(self, session):
        self.session = session

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        record = getattr(report, "interptest", None)
        if record is not None:
            self.session.add_record(record)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        # Here, not in the terminal summary, so that the report is written even without a terminal.
        self.summary = self.session.finish(verbose=getattr(session.config.option, "verbose", 0) > 0)

    def pytest_terminal_summary(self, terminalreporter) -> None:
        lines, written = getattr(self, "summary", None) or self.session.finish()
        if lines:
            terminalreporter.write_sep("-", "interptest")
            for line in lines:
                terminalreporter.write_line(line)
        if written:
            terminalreporter.write_line(f"interptest report written to {written}")


class _XdistHooks:
    """pytest-xdist's hooks, registered only where xdist is installed: the controller hands every worker a
    directory for the validation verdicts (see SharedValidation); YAML files a worker saw but did not
    collect as specs travel to the controller, which prints the collection-rule hint."""

    def __init__(self, session):
        self.session = session
        self.share: str | None = None

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node) -> None:
        if self.share is None:
            import tempfile

            self.share = tempfile.mkdtemp(prefix="interptest-xdist-")
        node.workerinput["interptest_share"] = self.share

    def pytest_unconfigure(self) -> None:
        if self.share is not None:
            import shutil

            shutil.rmtree(self.share, ignore_errors=True)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error) -> None:
        self.session.unclaimed.update(getattr(node, "workeroutput", {}).get("interptest_unclaimed", ()))

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        output = getattr(session.config, "workeroutput", None)
        if output is not None:
            output["interptest_unclaimed"] = [] if self.session.collected else sorted(self.session.unclaimed)


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    session = _session(parent.config)
    if session.is_spec_file(file_path):
        return SpecFile.from_parent(parent, path=file_path)
    session.note_unclaimed(file_path)
    return None


def _session(config: pytest.Config):
    return config.stash[_SESSION_KEY]


class SpecFile(pytest.File):
    """One YAML spec file; each behavior in it is one item."""

    def collect(self):
        from interptest.session import ModelSkipped

        session = _session(self.config)
        try:
            spec = session.load_file(self.path)
        except InterpError as error:
            raise self.CollectError(str(error)) from None
        errors = list(spec.errors)
        items = []
        for behavior in spec.behaviors:
            bound, unavailable = None, None
            if not behavior.skip and session.shared is None:  # xdist workers bind later
                try:
                    bound = session.bind(behavior)
                except ModelSkipped as skipped:
                    unavailable = str(skipped)
                except SpecError as error:
                    errors.append(error)
                    continue
                except InterpError as error:
                    raise self.CollectError(str(error)) from None
            item = BehaviorItem.from_parent(
                self, name=behavior.name, behavior=behavior, bound=bound, model_name=session.model_name(behavior)
            )
            if unavailable:
                item.add_marker(pytest.mark.skip(reason=f"model not available: {unavailable}"))
            items.append(item)
        if errors and (not items or self.config.option.collectonly):
            raise self.CollectError(str(combined(errors)))  # nothing would run (or --co checks a spec): all of them
        for refused in errors:  # the file's valid behaviors still run; each refused one reports its errors
            yield RefusedBehavior.from_parent(self, name=_refused_name(refused), error=refused)
        session.collected += len(items)
        yield from items


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list) -> None:
    """On an xdist worker: the verdicts of binding every collected behavior, one worker per model; a spec
    file a verdict rejects is a collection error, as in a serial run (where SpecFile.collect binds)."""
    interp = _session(config)
    if interp.shared is None:
        return
    behaviors = {
        item.nodeid: item.behavior for item in items if isinstance(item, BehaviorItem) and not item.behavior.skip
    }
    if not behaviors:
        return
    verdicts, bound = interp.shared.run(interp, behaviors)
    errors: dict = {}  # spec file -> {index in items: message}
    for index, item in enumerate(items):
        verdict = verdicts.get(item.nodeid, {}) if isinstance(item, BehaviorItem) else {}
        if "error" in verdict:
            errors.setdefault(item.parent, {})[index] = verdict["error"]
        elif "skip" in verdict:
            item.add_marker(pytest.mark.skip(reason=f"model not available: {verdict['skip']}"))
        if item.nodeid in bound:
            item.bound = bound[item.nodeid]
    failed = set()
    for spec_file, messages in errors.items():
        if all(index in messages for index, item in enumerate(items) if item.parent is spec_file):
            failed.add(spec_file)  # nothing of the file would run: a collection error listing each, as serially
            message = "\n".join(messages.values())
            config.hook.pytest_collectreport(report=pytest.CollectReport(spec_file.nodeid, "failed", message, []))
        else:  # the file's valid behaviors still run, as serially
            for index, message in messages.items():
                items[index] = RefusedBehavior.from_parent(spec_file, name=items[index].name, error=message)
    if failed:
        items[:] = [item for item in items if getattr(item, "parent", None) not in failed]


def _refused_name(error: SpecError) -> str:
    return error.behavior or f"line-{error.line}"


class RefusedBehavior(pytest.Item):
    """A behavior its spec file's other behaviors do not wait for: its errors (the same messages as a
    collection error) are reported when it sets up, while the valid behaviors collect and run."""

    def __init__(self, *, error: SpecError | str, **kwargs):
        super().__init__(**kwargs)
        self.error = error
        self.line = error.line if isinstance(error, SpecError) else None

    def setup(self) -> None:
        pytest.fail(str(self.error), pytrace=False)

    def runtest(self) -> None:  # never reached: setup refuses
        pytest.fail(str(self.error), pytrace=False)

    def reportinfo(self):
        return self.path, (self.line or 1) - 1, f"behavior {self.name} (refused)"


class BehaviorItem(pytest.Item):
    def __init__(self, *, behavior, bound, model_name: str, **kwargs):
        super().__init__(**kwargs)
        self.behavior = behavior
        self.bound = bound
        self.result = None
        for mark in behavior.marks:
            self.add_marker(mark)
        if behavior.skip:
            self.add_marker(pytest.mark.skip(reason=behavior.skip))
        if behavior.xfail:
            self.add_marker(pytest.mark.xfail(reason=behavior.xfail, strict=False))
        self.add_marker(pytest.mark.interp_model(model_name))
        # Under `pytest -n N --dist loadgroup`, behaviors of one model share a worker.
        self.add_marker(pytest.mark.xdist_group(model_name))

    def setup(self) -> None:
        if self.bound is None and not self.behavior.skip:  # under xdist: bound here, on the worker that runs it
            from interptest.session import ModelSkipped

            try:
                self.bound = _session(self.config).bind(self.behavior)
            except ModelSkipped as skipped:
                pytest.skip(f"model not available: {skipped}")

    def runtest(self) -> None:
        from interptest.api import BehaviorFailed

        result = self.result = _session(self.config).run(self.bound)
        if not result.passed:
            raise BehaviorFailed(result)

    def repr_failure(self, excinfo, style=None):
        from interptest.api import BehaviorFailed
        from interptest.render import render_failure

        if isinstance(excinfo.value, BehaviorFailed):
            reporter = self.config.pluginmanager.get_plugin("terminalreporter")  # absent with -p no:terminal
            markup = reporter is not None and self.config.get_terminal_writer().hasmarkup
            return render_failure(excinfo.value.result, color=markup)
        if isinstance(excinfo.value, InterpError):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        line = (self.behavior.line or 1) - 1
        return self.path, line, f"behavior {self.behavior.name}"


@pytest.fixture(scope="session")
def interp_model(request: pytest.FixtureRequest):
    """The run's default model (--interp-model, else ini interp_model, else interptest-tiny), loaded once."""
    try:
        return _session(request.config).default_model()
    except InterpError as error:
        pytest.fail(str(error), pytrace=False)
