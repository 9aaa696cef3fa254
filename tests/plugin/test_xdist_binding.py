"""Under pytest-xdist every worker collects every behavior, but a model is loaded at collection by one
worker only (it binds, i.e. validates, that model's behaviors and shares the verdicts); the other workers
load a model when they run one of its behaviors (issue 13, "What must hold" 8). A spec the model rejects
stays a collection error, with the serial run's message."""

import json
import shutil

from interptest.zoo import tiny_model_dir

RECORDER = """\
import json, os

import interptest.model

_load = interptest.model.load_model
_phase = {"now": "collection"}


def _log(*entry):
    with open(f"log-{os.environ.get('PYTEST_XDIST_WORKER', 'serial')}.jsonl", "a") as handle:
        handle.write(json.dumps(entry) + "\\n")


def load_model(name, *args, **kwargs):
    _log("load", _phase["now"], os.path.basename(str(name).rstrip("/")))
    return _load(name, *args, **kwargs)


interptest.model.load_model = load_model


def pytest_collection_finish(session):
    _phase["now"] = "run"


def pytest_runtest_setup(item):
    _log("run", item.nodeid, os.path.basename(item.get_closest_marker("interp_model").args[0].rstrip("/")))
"""

SPEC = """\
behaviors:
  - name: france
    prompt: "The capital of France is"
    expect: " Paris"
  - name: alex
    prompt: "Her name was Alex Hart. When Alex"
    expect: " Hart"
  - name: japan
    model: ./copy
    prompt: "The capital of Japan is"
    expect: " Tokyo"
  - name: norway
    model: ./copy
    prompt: "The capital of Norway is"
    expect: " Oslo"
"""


def logs(pytester) -> dict:
    found = {}
    for path in pytester.path.glob("log-*.jsonl"):
        found[path.stem[4:]] = [json.loads(line) for line in path.read_text().splitlines()]
    return found


def test_each_model_is_loaded_at_collection_by_one_worker_and_otherwise_where_it_runs(pytester, write):
    write("behaviors/f.yaml", SPEC)
    shutil.copytree(tiny_model_dir(), pytester.path / "behaviors" / "copy")
    write("conftest.py", RECORDER)
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
    workers = logs(pytester)
    assert set(workers) == {"gw0", "gw1"}
    at_collection = sorted(
        model for log in workers.values() for kind, phase, model in log if kind == "load" and phase == "collection"
    )
    assert at_collection == ["copy", "interptest-tiny"]  # each model once, not once per worker
    for worker, log in workers.items():
        ran = {model for kind, _, model in log if kind == "run"}
        later = {model for kind, phase, model in log if kind == "load" and phase == "run"}
        assert later <= ran, (worker, log)  # loaded later only to run its behaviors
    assert sum(1 for log in workers.values() for entry in log if entry[0] == "run") == 4


BAD = """\
behaviors:
  - name: ok
    prompt: "The capital of France is"
    expect: " Paris"
  - name: bad
    prompt: "The capital of France is"
    expect: " Paris"
    corrupt: "The capital of Spain is"
    claims:
      - "resid_pre[7, -1] recovers >= 0.9"
"""
MESSAGE = (
    "*behaviors/b.yaml:10: behavior 'bad', key 'claims[[]0]': claim 'resid_pre[[]7, -1] recovers >= 0.9': "
    "layer 7 is out of range: there are 2 layers (0 to 1, or -1 to -2 from the end)"
)


def test_a_behavior_the_model_rejects_is_refused_alike_serially_and_under_xdist(pytester, write):
    write("behaviors/b.yaml", BAD)
    write("behaviors/a.yaml", BAD.split("  - name: bad")[0])
    serial = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    write("behaviors/c.yaml", "behaviors:\n  - name: bad" + BAD.split("  - name: bad")[1])
    parallel = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider")
    for result in (serial, parallel):  # b.yaml's valid behavior still runs; the refused one reports why
        result.stdout.fnmatch_lines(["*ERROR at setup of behavior bad (refused)*", MESSAGE])
        assert "PASSED   behaviors/b.yaml::ok" in result.stdout.str()
    serial.assert_outcomes(passed=2, errors=1)
    # c.yaml has nothing valid: a collection error, and xdist goes on with the other files, as always
    parallel.stdout.fnmatch_lines(["*ERROR collecting behaviors/c.yaml*"])
    parallel.assert_outcomes(passed=2, errors=2)
