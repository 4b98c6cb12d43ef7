"""The pattern grammar: INPUT -> [[CONV]*N -> POOL]*M -> [FC]*K and friends."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnncli.errors import SpecError
from cnncli.spec.pattern import Block, PatternError, parse_pattern

B = Block

VALID = [
    ("INPUT -> [[CONV]*1 -> POOL]*2 -> [FC]*3", [B(1, True), B(1, True)], 3),
    ("INPUT -> [[CONV]*2 -> POOL]*3 -> [FC]*2", [B(2, True)] * 3, 2),
    ("INPUT -> [[CONV]*2]*2 -> [FC]*1", [B(4, False)], 1),
    ("INPUT -> [[CONV]*2 -> POOL]*0 -> [FC]*3", [], 3),
    ("INPUT -> [FC]*3", [], 3),
    ("INPUT -> FC", [], 1),
    ("INPUT -> CONV -> POOL -> CONV -> POOL -> FC -> FC", [B(1, True), B(1, True)], 2),
    ("INPUT -> CONV -> CONV -> POOL -> CONV -> FC", [B(2, True), B(1, False)], 1),
    ("INPUT -> [[CONV]*1 -> POOL]*2 -> [[CONV]*3 -> POOL] -> [FC]*3",
     [B(1, True), B(1, True), B(3, True)], 3),
    ("input->conv->pool->fc", [B(1, True)], 1),
    ("  Input  ->\t[ [ Conv ] * 2 -> Pool ] * 2\n-> [ Fc ] * 2 ", [B(2, True)] * 2, 2),
    ("INPUT -> [CONV -> POOL] -> [CONV] -> FC", [B(1, True), B(1, False)], 1),
    ("INPUT -> CONV*3 -> POOL -> FC*2", [B(3, True)], 2),
    ("INPUT -> [[CONV]*1 -> POOL]*1 -> [FC]*01", [B(1, True)], 1),
]


@pytest.mark.parametrize(("text", "blocks", "k"), VALID)
def test_valid_patterns(text, blocks, k):
    pat = parse_pattern(text)
    assert list(pat.blocks) == blocks
    assert pat.fc == k
    # the canonical rendering parses back to the same thing
    assert parse_pattern(str(pat)) == pat


# (text, column of the caret (0-based), words in the message)
INVALID = [
    ("INPUT -> [[CONV]*2 -> POOL?]*2 -> [FC]*3", 26, ["POOL?", "write POOL or leave it out"]),
    ("", 0, ["empty"]),
    ("CONV -> FC", 0, ["starts with INPUT"]),
    ("C8--P2", 0, ["starts with INPUT"]),
    ("INPUT", 5, ["at least one FC"]),
    ("INPUT -> [[CONV]*2 -> POOL]*2", 29, ["at least one FC"]),
    ("INPUT -> [FC]*0", 15, ["at least one FC"]),
    ("INPUT ->", 8, ["after '->'"]),
    ("INPUT -> CONV ->", 16, ["after '->'"]),
    ("INPUT -> -> FC", 9, ["between two '->'"]),
    ("INPUT CONV -> FC", 6, ["expected '->'"]),
    ("INPUT - CONV", 6, ["expected '->'"]),
    ("INPUT -> CONV > FC", 14, ["expected '->'"]),
    ("INPUT -> CONV -> DENSE", 17, ["unknown layer 'DENSE'"]),
    ("INPUT -> CNV -> FC", 9, ["did you mean CONV"]),
    ("INPUT -> [CONV -> RELU]*2 -> FC", 18, ["activations are options"]),
    ("INPUT -> INPUT -> FC", 9, ["INPUT comes once"]),
    ("INPUT -> [[CONV]*2 -> POOL -> FC", 32, ["expected ']'", "column 10"]),
    ("INPUT -> [] -> FC", 10, ["empty group"]),
    ("INPUT -> [[CONV]* -> POOL] -> FC", 18, ["repeat count"]),
    ("INPUT -> [[CONV]*99999999999] -> FC", 17, ["too large"]),
    ("INPUT -> [[[CONV]*1000]*1000] -> FC", 24, ["more than 1000 layers"]),
    ("INPUT -> POOL -> FC", 9, ["POOL must follow a CONV"]),
    ("INPUT -> CONV -> POOL -> POOL -> FC", 25, ["POOL must follow a CONV"]),
    ("INPUT -> FC -> CONV", 15, ["CONV after FC"]),
    ("INPUT -> CONV -> FC -> POOL", 23, ["POOL after FC"]),
    ("INPUT -> CONV -> FC; drop", 19, ["unexpected character ';'"]),
    ("INPUT -> CONV → FC", 14, ["unexpected character"]),
    ("INPUT -> " + "[" * 40 + "CONV" + "]" * 40 + " -> FC", 25, ["nested more than 16"]),
]


@pytest.mark.parametrize(("text", "col", "needles"), INVALID)
def test_invalid_patterns_point_at_the_column(text, col, needles):
    with pytest.raises(PatternError) as info:
        parse_pattern(text)
    err = info.value
    assert err.offset == col, str(err)
    for n in needles:
        assert n in str(err), str(err)
    # the message shows the pattern, then a caret under the bad column
    lines = str(err).split("\n")
    assert lines[1] == "  " + text.replace("\n", " ").replace("\t", " ")
    assert lines[2] == " " * (col + 2) + "^"


def test_pattern_errors_in_a_config_name_file_line_and_column(tmp_path):
    from cnncli.spec import load_config

    spec = tmp_path / "net.yaml"
    spec.write_text('model:\n  input: [1, 8, 8]\n  pattern: "INPUT -> CONV -> POOL? -> FC"\n'
                    "  conv: {filters: 2, size: 3}\n  fc: {units: 2}\n")
    with pytest.raises(SpecError) as info:
        load_config(spec)
    err = info.value
    # `  pattern: "` puts the string's first character in column 13; the '?' is 21 further
    assert (err.path, err.line, err.col, err.field) == (str(spec), 3, 34, "model.pattern")
    assert spec.read_text().splitlines()[2][err.col - 1] == "?"
    assert "POOL? is the recipe's notation" in str(err)


def test_not_a_string():
    with pytest.raises(SpecError):
        parse_pattern(42)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("INPUTCONVPOLFCinputconvpolfc[]*->?0123 \t\n;x")),
               max_size=60))
def test_random_patterns_only_raise_spec_errors(text):
    try:
        pat = parse_pattern(text)
    except SpecError:
        return
    assert pat.fc >= 1
    assert all(b.n_conv >= 1 for b in pat.blocks)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_arbitrary_text_only_raises_spec_errors(text):
    try:
        parse_pattern(text)
    except SpecError:
        pass
