"""Which YAML files are specs, node ids, and pytest's own selection options on behaviors."""


def test_yaml_inside_behaviors_directories_is_collected_other_yaml_is_not(pytester, write, alex_hart):
    write("behaviors/names.yaml", alex_hart)
    write("sub/behaviors/more.yml", alex_hart)
    write(".github/workflows/ci.yml", "on: push\njobs: {nope: [\n")  # invalid YAML: must not be touched
    write("config.yaml", "a: 1\n")
    result = pytester.runpytest("--co", "-q")
    result.stdout.fnmatch_lines(
        [
            "behaviors/names.yaml::alex-hart",
            "behaviors/names.yaml::france",
            "sub/behaviors/more.yml::alex-hart",
            "sub/behaviors/more.yml::france",
            "4 tests collected*",
        ]
    )
    assert "ci.yml" not in result.stdout.str() and "config.yaml" not in result.stdout.str()
    assert result.ret == 0


def test_yaml_named_on_the_command_line_is_collected(pytester, write, alex_hart):
    write("specs/names.yaml", alex_hart)
    result = pytester.runpytest("specs/names.yaml", "--co", "-q")
    result.stdout.fnmatch_lines(["specs/names.yaml::alex-hart", "specs/names.yaml::france", "2 tests collected*"])
    assert pytester.runpytest("--co", "-q").ret == 5  # not named, not in behaviors/: no tests


def test_interp_files_replaces_the_default_rule(pytester, write, alex_hart):
    write("specs/names.yaml", alex_hart)
    write("behaviors/names.yaml", alex_hart)
    pytester.makeini("[pytest]\ninterp_files =\n    specs/*.yaml\n")
    result = pytester.runpytest("--co", "-q")
    result.stdout.fnmatch_lines(["specs/names.yaml::alex-hart", "specs/names.yaml::france", "2 tests collected*"])
    assert "behaviors/names.yaml" not in result.stdout.str()


def test_behaviors_run_and_keyword_selection(pytester, write, alex_hart):
    write("behaviors/names.yaml", alex_hart)
    result = pytester.runpytest("-k", "france", "-v")
    result.stdout.fnmatch_lines(["behaviors/names.yaml::france PASSED*", "*1 passed, 1 deselected*"])


def test_exitfirst_and_last_failed(pytester, write, alex_hart):
    write("behaviors/names.yaml", alex_hart.replace('expect: " Hart"', 'expect: " Cole"'))
    result = pytester.runpytest("-x")
    result.assert_outcomes(failed=1)  # -x stops after alex-hart
    result = pytester.runpytest("--lf", "-v")
    result.stdout.fnmatch_lines(["*run-last-failure: rerun previous 1 failure*", "*alex-hart FAILED*"])
    result.assert_outcomes(failed=1)
    assert "france" not in result.stdout.str()


def test_junit_xml_names_each_behavior(pytester, write, alex_hart):
    write("behaviors/names.yaml", alex_hart)
    pytester.runpytest("--junitxml=out.xml").assert_outcomes(passed=2)
    xml = (pytester.path / "out.xml").read_text()
    assert 'name="alex-hart"' in xml and 'name="france"' in xml and 'failures="0"' in xml


def test_marks_skip_and_xfail(pytester, write, alex_hart):
    write(
        "behaviors/marked.yaml",
        """\
        behaviors:
          - name: slow-one
            marks: [slow]
            prompt: "The capital of France is"
            expect: " Paris"
          - name: skipped
            skip: "waiting for a bigger model"
            prompt: "The capital of France is"
            expect: " Paris"
          - name: expected-to-fail
            xfail: "known gap"
            prompt: "The capital of France is"
            expect: " Rome"
        """,
    )
    pytester.makeini("[pytest]\nmarkers =\n    slow: slow behaviors\n")
    result = pytester.runpytest("-m", "slow")
    result.assert_outcomes(passed=1, deselected=2)
    result = pytester.runpytest("-rsx")
    result.assert_outcomes(passed=1, skipped=1, xfailed=1)
    result.stdout.fnmatch_lines(["*waiting for a bigger model*", "*known gap*"])
