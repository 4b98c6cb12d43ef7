"""Safe YAML reading: the S-rows of RELIABILITY.md that concern the file itself."""

from __future__ import annotations

import time
import tracemalloc

import pytest
from conftest import assert_clean_error

from cnncli.errors import SpecError
from cnncli.spec import dump_yaml, load_config, yamlio
from cnncli.spec.yamlio import load_mapping, parse_yaml

GOOD = """model:
  input: [1, 28, 28]
  pattern: "INPUT -> [[CONV]*1 -> POOL]*2 -> [FC]*2"
  conv: {filters: [4, 8], size: 3}
  fc: {units: [16, 10]}
"""

LOADERS = [pytest.param(False, id="libyaml"), pytest.param(True, id="pure-python")]


def _err(text: str, pure: bool) -> SpecError:
    with pytest.raises(SpecError) as info:
        load_mapping(text, "spec.yaml", pure=pure)
    return info.value


# (text, line, col, substrings)
BAD_YAML = [
    ("model:\n  blocks:\n  - conv: {filters: 8\n  - dense: 10\n", 4, 10,
     ["expected ',' or '}'", "flow mapping started at line 3"]),
    ("a:\n\tb: 1\n", 2, 1, ["'\\t'", "tabs"]),
    ("a: [1, 2\n", 2, 1, ["expected ',' or ']'", "flow sequence started at line 1"]),
    ("a: 'x\n", 2, 1, ["unexpected end of stream", "quoted scalar started at line 1"]),
    ("a: b: c\n", 1, 5, ["mapping values are not allowed here"]),
    ("", None, None, ["spec is empty"]),
    ("# only a comment\n\n", None, None, ["spec is empty"]),
    ("---\n", None, None, ["spec is empty"]),
    ("- 1\n- 2\n", 1, 1, ["top level must be a mapping", "list"]),
    ("just text\n", 1, 1, ["top level must be a mapping", "string"]),
    ("a: 1\n---\nb: 2\n", 2, 1, ["expected a single document"]),
    ("a: 1\nb: 2\na: 3\n", 3, 1, ["duplicate key 'a'", "lines 1 and 3"]),
    ("m:\n  c: 2\n  c: 3\n", 3, 3, ["duplicate key 'c'", "lines 2 and 3"]),
    ("a: !!python/object/apply:os.system ['touch PWNED']\n", 1, 4, ["tags are not allowed"]),
    ("a: !!str 1\n", 1, 4, ["tags are not allowed"]),
    ("a: &x 1\nb: *x\n", 1, 4, ["anchors and aliases are not allowed"]),
    ("a: *x\n", 1, 4, ["anchors and aliases are not allowed"]),
    ("c:\n  <<: {a: 2}\n", 2, 3, ["merge keys (<<) are not allowed"]),
    ("[" * 5000, 1, yamlio.MAX_DEPTH + 1, ["nested too deeply"]),
    ("a:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 80)) + "  " * 80 + "v: 1\n", None,
     None, ["nested too deeply"]),
    ("a: b\x00c\n", 1, 5, ["#x0000 is not allowed"]),
    ("? [a, b]\n: 1\n", 1, 3, ["keys must be plain names"]),
]


@pytest.mark.parametrize("pure", LOADERS)
@pytest.mark.parametrize(("text", "line", "col", "needles"), BAD_YAML)
def test_bad_yaml_is_a_spec_error_with_position(text, line, col, needles, pure):
    err = _err(text, pure)
    assert err.path == "spec.yaml"
    if line is not None:
        assert (err.line, err.col) == (line, col), str(err)
    for n in needles:
        assert n in str(err), str(err)


@pytest.mark.parametrize(("text", "line", "col", "needles"), BAD_YAML)
def test_both_loaders_say_the_same(text, line, col, needles):
    assert str(_err(text, False)) == str(_err(text, True))


def test_positions_of_keys_and_values_are_recorded():
    doc = parse_yaml("model:\n  conv: {filters: [6, 16]}\n  name: 'x'\n")
    assert (doc.marks[("model", "conv", "filters", 1)].line,
            doc.marks[("model", "conv", "filters", 1)].col) == (2, 23)
    assert doc.keymarks[("model", "name")].line == 3
    assert doc.marks[("model", "name")].style == "'"


@pytest.mark.parametrize("pure", LOADERS)
def test_scalars_resolve_like_safe_load(pure):
    doc = parse_yaml("a: 1e-3\nb: no\nc: 'no'\nd: 2020-01-01\ne: 0x10\nf: ~\ng: 1.5\n",
                     pure=pure)
    assert doc.data == {"a": "1e-3", "b": False, "c": "no", "d": "2020-01-01", "e": 16,
                        "f": None, "g": 1.5}


def test_alias_bomb_is_refused_quickly_and_small():
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(ord("b"), ord("j")):
        prev = chr(i - 1)
        lines.append(f"{chr(i)}: &{chr(i)} [" + ",".join([f"*{prev}"] * 9) + "]")
    text = "\n".join(lines) + "\n"
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(SpecError, match="anchors and aliases are not allowed") as info:
        load_config(text)
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert info.value.line == 1
    assert elapsed < 1.0
    assert peak < 10 * 2**20


def test_python_tag_never_runs(tmp_path, cli, write, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "PWNED"
    spec = write(f"model: !!python/object/apply:os.system ['touch {marker}']\n")
    res = cli("summary", spec)
    assert_clean_error(res, 2, "tags are not allowed")
    assert not marker.exists()


def test_non_utf8_names_the_byte(cli, write):
    spec = write(b"model:\n  name: caf\xe9\n")
    res = cli("summary", spec)
    assert_clean_error(res, 2, "not valid UTF-8 at byte 18", "spec.yaml")


def test_bom_is_accepted(write):
    spec = write(b"\xef\xbb\xbf" + GOOD.encode())
    assert load_config(spec).model.layers[0].filters == 4


def test_size_limit_is_checked_before_parsing(cli, write, monkeypatch):
    spec = write("model: {}\n" + "#" * (2 * 2**20 - 10) + "\n")
    called = []
    monkeypatch.setattr(yamlio, "parse_yaml", lambda *a, **k: called.append(1))
    res = cli("summary", spec)
    assert_clean_error(res, 2, f"is {spec.stat().st_size} bytes; limit 1048576")
    assert not called


def test_size_limit_boundary(write):
    body = GOOD + "#" * (yamlio.MAX_BYTES - len(GOOD) - 1) + "\n"
    assert len(body.encode()) == yamlio.MAX_BYTES
    load_config(write(body))
    with pytest.raises(SpecError, match="limit 1048576"):
        load_config(write(body + "\n"))


def test_yaml_text_size_limit():
    with pytest.raises(SpecError, match="limit 1048576"):
        load_config(GOOD + "#" * yamlio.MAX_BYTES + "\n")


def test_missing_file_and_directory(cli, tmp_path):
    assert_clean_error(cli("summary", tmp_path / "x.yaml"), 2, "cannot read spec",
                       "no such file")
    assert_clean_error(cli("summary", tmp_path), 2, "is a directory")


def test_unreadable_file(write, monkeypatch):
    spec = write(GOOD)

    def deny(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("builtins.open", deny)
    with pytest.raises(SpecError, match="permission denied"):
        load_config(spec)


def test_recursion_error_is_caught(monkeypatch):
    def boom(self, prefix=()):
        raise RecursionError

    monkeypatch.setattr(yamlio._StrictMixin, "build_doc", boom)
    with pytest.raises(SpecError, match="nested too deeply"):
        parse_yaml("a: 1\n")


def test_dump_yaml_round_trips():
    cfg = load_config("lenet5")
    text = dump_yaml(cfg.resolved)
    assert "input: [1, 28, 28]" in text
    assert load_config(text) == cfg
    assert load_config(text).resolved == cfg.resolved
    small = dump_yaml({"lr": 1e-5, "x": "no", "y": None})
    assert parse_yaml(small).data == {"lr": 1e-5, "x": "no", "y": None}


@pytest.mark.parametrize(("text", "line", "col", "needles"), BAD_YAML)
def test_bad_yaml_through_the_cli(cli, write, text, line, col, needles):
    spec = write(text)
    where = f"{spec}:{line}:{col}: " if line is not None else f"{spec}:"
    res = cli("summary", spec)
    assert_clean_error(res, 2, where, *needles)
    assert res.stdout == ""
