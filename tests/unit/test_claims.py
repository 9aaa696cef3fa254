"""The claim grammar and binding: pure functions, no model."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from interptest.claims import (
    ClaimBindError,
    ClaimBindIndexError,
    ClaimSyntaxError,
    Comparison,
    LocalizationClaim,
    PredictionClaim,
    bind_claims,
    parse_claim,
    resolve_layers,
    resolve_positions,
)

pytestmark = pytest.mark.torchfree  # no torch, no transformer_lens, no model: `pytest tests -m torchfree`

ISSUE_EXAMPLES = [
    "resid_pre[0:2, ' Hart'] recovers >= 0.9",
    "resid_pre[2:, -1] recovers >= 0.9",
    "resid_pre[elsewhere] recovers <= 0.1",
    "any resid_mid[1:, last] recovers >= 0.5",
    "attn_out[2, -1] recovers >= 0.3",
    "mlp_out[0, ' France'] breaks >= 0.5",
    "heads[1.0, 2.3] together recovers >= 0.6",
    "resid_post[:, ' Alex'#2] recovers <= 0.05",
]
TOKENS = ["<|BOS|>", "Her", " name", " was", " Alex", " Hart", ".", " When", " Alex"]


@pytest.mark.parametrize("text", ISSUE_EXAMPLES)
def test_issue_examples_parse(text):
    claim = parse_claim(text)
    assert isinstance(claim, LocalizationClaim) and claim.text == text


def test_parsed_fields():
    claim = parse_claim("any resid_mid[1:, last] recovers >= 0.5")
    assert (claim.component, claim.quantifier, claim.direction) == ("resid_mid", "any", "denoise")
    assert claim.comparison == Comparison(">=", 0.5)
    heads = parse_claim("heads[1.0, 2.3] together breaks < 0.6")
    assert heads.heads == ((1, 0), (2, 3)) and heads.quantifier == "together" and heads.direction == "noise"
    positioned = parse_claim("heads[2.10; -1] recovers >= 0.1")
    assert positioned.heads == ((2, 10),) and positioned.positions.values == (-1,)
    listed = parse_claim('resid_pre[[0, 2], "x"#3] recovers == 1')
    assert listed.layers.values == (0, 2) and listed.positions.values == ("x", 3)
    assert parse_claim("prob(' Hart') >= 0.5") == PredictionClaim(
        "prob(' Hart') >= 0.5", "prob", " Hart", Comparison(">=", 0.5)
    )
    assert parse_claim("logit_diff > -2e-1").comparison == Comparison(">", -0.2)
    assert parse_claim(r"rank('it\'s') <= 3").token == "it's"


@pytest.mark.parametrize(
    "text, column, message",
    [
        ("resid_pre[0:2 ' Hart'] recovers >= 0.9", 14, "expected ',' and a position part"),
        ("resid_pr[0, 1] recovers >= 0.9", 0, "did you mean 'resid_pre'?"),
        ("resid_pre[0, 1] recover >= 0.9", 16, "expected 'recovers' or 'breaks' (did you mean 'recovers'?)"),
        ("resid_pre[0, 1] recovers = 0.9", 25, "'=' is not a comparison"),
        ("resid_pre[0, 1] recovers >= high", 28, "expected a number, found 'high'"),
        ("resid_pre[0, 1] recovers >= 0.9 extra", 32, "expected the end of the claim"),
        ("resid_pre[0, ' Hart] recovers >= 0.9", 13, "unterminated string"),
        ("heads[1, 2] recovers >= 0.9", 6, "expected a head as LAYER.HEAD"),
        ("any heads[1.0] together recovers >= 0.9", 15, "'any' and 'together' cannot be combined"),
        ("prob( Hart) >= 0.5", 6, "expected a quoted token text"),
        ("resid_pre[0, 'x'#0] recovers >= 1", 17, "occurrences count from 1"),
        ("resid_pre[0, 1] recovers @ 1", 25, "unexpected character '@'"),
        ("", 0, "the claim is empty"),
    ],
)
def test_syntax_errors_point_at_the_offending_column(text, column, message):
    with pytest.raises(ClaimSyntaxError) as info:
        parse_claim(text)
    assert info.value.column == column
    assert message in info.value.message if message != "the claim is empty" else message in str(info.value)


def test_resolve_layers():
    assert resolve_layers(parse_claim("resid_pre[2:, 0] recovers > 0").layers, 4) == [2, 3]
    assert resolve_layers(parse_claim("resid_pre[-1, 0] recovers > 0").layers, 4) == [3]
    assert resolve_layers(parse_claim("resid_pre[:, 0] recovers > 0").layers, 3) == [0, 1, 2]
    assert resolve_layers(parse_claim("resid_pre[[0, -1], 0] recovers > 0").layers, 3) == [0, 2]
    with pytest.raises(ClaimBindError, match="layer 5 is out of range: there are 3 layers"):
        resolve_layers(parse_claim("resid_pre[5, 0] recovers > 0").layers, 3)
    with pytest.raises(ClaimBindError, match="layer slice 0:5 reaches past the end: there are 3 layers"):
        resolve_layers(parse_claim("resid_pre[0:5, 0] recovers > 0").layers, 3)
    with pytest.raises(ClaimBindError, match="layer slice 2:1 selects no layer"):
        resolve_layers(parse_claim("resid_pre[2:1, 0] recovers > 0").layers, 3)


def test_resolve_positions():
    def pos(text):
        return resolve_positions(parse_claim(f"resid_pre[0, {text}] recovers > 0").positions, TOKENS)

    assert pos("last") == [8] and pos("-1") == [8] and pos("' Hart'") == [5] and pos("' Alex'#2") == [8]
    assert pos("4:6") == [4, 5]
    with pytest.raises(
        ClaimBindError,
        match=r"' Alex' is ambiguous: it occurs 2 times \(positions 4, 8\); "
        r"write ' Alex'#1 or ' Alex'#2",
    ):
        pos("' Alex'")
    with pytest.raises(
        ClaimBindError,
        match=r"position token 'Hart' does not occur .* did you mean ' Hart' "
        r"\(mind the leading space\)",
    ):
        pos("'Hart'")
    with pytest.raises(ClaimBindError, match="asks for occurrence 3 but ' Alex' occurs 2 time"):
        pos("' Alex'#3")
    with pytest.raises(ClaimBindError, match="position 9 is out of range: there are 9 positions"):
        pos("9")
    with pytest.raises(ClaimBindError, match="unknown template variable"):
        pos("{last}")


def test_bind_elsewhere_excludes_cells_of_other_claims_on_the_component():
    claims = [
        parse_claim(t)
        for t in (
            "resid_pre[0, ' Hart'] recovers >= 0.9",
            "resid_pre[1:, -1] recovers >= 0.9",
            "resid_pre[elsewhere] recovers <= 0.1",
            "mlp_out[0, 0] recovers <= 1",
        )
    ]
    bound = bind_claims(claims, TOKENS, n_layers=3, n_heads=4)
    assert bound[0].cells == ((0, 5),) and bound[1].cells == ((1, 8), (2, 8))
    elsewhere = set(bound[2].cells)
    assert len(elsewhere) == 3 * 9 - 3 and (0, 5) not in elsewhere and (2, 8) not in elsewhere
    heads = bind_claims(
        [parse_claim("heads[1.0] recovers > 0"), parse_claim("heads[elsewhere] recovers < 0.1")],
        TOKENS,
        n_layers=2,
        n_heads=2,
    )
    assert set(heads[1].cells) == {(0, 0), (0, 1), (1, 1)}


def test_bind_errors_carry_the_claim_index():
    claims = [parse_claim("resid_pre[0, 0] recovers > 0"), parse_claim("heads[1.7] recovers > 0")]
    with pytest.raises(ClaimBindIndexError, match="head 1.7 is out of range: each layer has 4 heads") as info:
        bind_claims(claims, TOKENS, n_layers=3, n_heads=4)
    assert info.value.index == 1


@given(st.integers(-9, 9), st.integers(-9, 9), st.integers(1, 8))
def test_layer_slices_agree_with_python_slicing(start, stop, n):
    claim = parse_claim(f"resid_pre[{start}:{stop}, 0] recovers > 0")
    expected = list(range(n))[start:stop]
    in_range = all(-n <= b <= n for b in (start, stop))
    if in_range and expected:
        assert resolve_layers(claim.layers, n) == expected
    else:
        with pytest.raises(ClaimBindError):
            resolve_layers(claim.layers, n)


@given(st.sampled_from([">=", "<=", ">", "<", "=="]), st.floats(-5, 5, allow_nan=False), st.floats(-5, 5))
def test_comparison_round_trip(op, threshold, value):
    claim = parse_claim(f"logit_diff {op} {threshold!r}")
    assert claim.comparison.threshold == threshold
    expected = {">=": value >= threshold, "<=": value <= threshold, ">": value > threshold, "<": value < threshold}.get(
        op
    )
    if expected is not None:
        assert claim.comparison.holds(value) == expected
