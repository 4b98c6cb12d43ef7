"""The pattern grammar: ``INPUT -> [[CONV]*N -> POOL]*M -> [FC]*K`` and its relatives.

The recipe is the one of the CS231n notes ("Convolutional Neural Networks: layer
patterns"), with activations moved into the layer options::

    pattern  := INPUT ( '->' item )*
    item     := CONV | POOL | FC | '[' sequence ']' ( '*' count )?
              | ( CONV | POOL | FC ) '*' count
    sequence := item ( '->' item )*

Keywords are case-insensitive and whitespace is free. ``[...]`` without ``*n``
means once. The expansion is a flat run of CONV/POOL/FC; a block is a maximal run
of CONVs followed by at most one POOL, and every FC comes after the last block.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass

from cnncli.errors import SpecError

KEYWORDS = ("INPUT", "CONV", "POOL", "FC")
MAX_LAYERS = 1000        # after expansion
MAX_NESTING = 16         # brackets inside brackets
MAX_COUNT_DIGITS = 6


@dataclass(frozen=True)
class Block:
    n_conv: int
    has_pool: bool


@dataclass(frozen=True)
class Pattern:
    blocks: tuple[Block, ...]
    fc: int                                  # K, at least 1

    @property
    def n_conv(self) -> int:
        return sum(b.n_conv for b in self.blocks)

    @property
    def n_pool(self) -> int:
        return sum(1 for b in self.blocks if b.has_pool)

    def __str__(self) -> str:
        parts = ["INPUT"]
        for b in self.blocks:
            parts.append(f"[[CONV]*{b.n_conv}" + (" -> POOL]" if b.has_pool else "]"))
        parts.append(f"[FC]*{self.fc}")
        return " -> ".join(parts)


class PatternError(SpecError):
    """A grammar error; ``offset`` is the 0-based column in the pattern string."""

    def __init__(self, problem: str, text: str, offset: int, hint: str | None = None) -> None:
        self.problem = problem
        self.offset = offset
        self.text = text
        shown = text.replace("\n", " ").replace("\t", " ")
        caret = " " * (offset + 2) + "^"
        super().__init__(f"{problem}\n  {shown}\n{caret}", hint=hint)


# ---- tokens -------------------------------------------------------------------------------


def _tokens(text: str) -> Iterator[tuple[str, str, int]]:
    """(kind, value, offset) with kind in word, num, arrow, '[', ']', '*', end; lazily, so the
    first error reported is the leftmost one."""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c.isascii() and (c.isalpha() or c == "_"):
            j = i
            while j < n and text[j].isascii() and (text[j].isalnum() or text[j] == "_"):
                j += 1
            yield ("word", text[i:j], i)
            i = j
        elif c.isascii() and c.isdigit():
            j = i
            while j < n and text[j].isascii() and text[j].isdigit():
                j += 1
            yield ("num", text[i:j], i)
            i = j
        elif text.startswith("->", i):
            yield ("arrow", "->", i)
            i += 2
        elif c in "[]*":
            yield (c, c, i)
            i += 1
        elif c == "?":
            raise PatternError(
                "'?' is not part of a pattern: POOL? is the recipe's notation for an optional "
                "pool; write POOL or leave it out", text, i)
        elif c == "-" or c == ">":
            raise PatternError("expected '->' between layers", text, i)
        else:
            raise PatternError(f"unexpected character {c!r}", text, i)
    while True:
        yield ("end", "", len(text))


# ---- parser ---------------------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.next = next(self.toks)

    def peek(self) -> tuple[str, str, int]:
        return self.next

    def take(self) -> tuple[str, str, int]:
        t = self.next
        self.next = next(self.toks)
        return t

    def fail(self, problem: str, offset: int | None = None, hint: str | None = None):
        raise PatternError(problem, self.text, self.peek()[2] if offset is None else offset, hint)

    def parse(self) -> list[tuple[str, int]]:
        kind, value, off = self.peek()
        if kind == "end":
            self.fail("the pattern is empty; write e.g. INPUT -> [[CONV]*1 -> POOL]*2 -> [FC]*2")
        if not (kind == "word" and value.upper() == "INPUT"):
            self.fail("a pattern starts with INPUT")
        self.take()
        layers: list[tuple[str, int]] = []
        while self.peek()[0] != "end":
            self.arrow()
            layers += self.item(0)
            if len(layers) > MAX_LAYERS:
                self.fail(f"the pattern expands to more than {MAX_LAYERS} layers", off)
        return layers

    def arrow(self) -> None:
        kind, value, off = self.peek()
        if kind != "arrow":
            shown = value or "the end"
            self.fail(f"expected '->' before {shown!r}" if value else "expected '->'", off)
        self.take()

    def item(self, depth: int) -> list[tuple[str, int]]:
        kind, value, off = self.take()
        if kind == "word":
            word = value.upper()
            if word not in KEYWORDS:
                self._unknown(value, off)
            if word == "INPUT":
                self.fail("INPUT comes once, at the start of the pattern", off)
            seq = [(word, off)]
        elif kind == "[":
            if depth >= MAX_NESTING:
                self.fail(f"brackets nested more than {MAX_NESTING} deep", off)
            if self.peek()[0] == "]":
                self.fail("empty group '[]'")
            seq = self.item(depth + 1)
            while self.peek()[0] == "arrow":
                self.take()
                seq = seq + self.item(depth + 1)
                if len(seq) > MAX_LAYERS:
                    self.fail(f"the pattern expands to more than {MAX_LAYERS} layers", off)
            k2, v2, o2 = self.peek()
            if k2 != "]":
                what = repr(v2) if v2 else "the end of the pattern"
                self.fail(f"expected ']' to close the '[' at column {off + 1}, found {what}", o2)
            self.take()
        elif kind == "end":
            self.fail("expected a layer (CONV, POOL, FC or '[') after '->'", off)
        elif kind == "arrow":
            self.fail("expected a layer between two '->'", off)
        else:
            self.fail(f"expected a layer (CONV, POOL, FC or '['), found {value!r}", off)
        if self.peek()[0] == "*":
            self.take()
            k3, v3, o3 = self.peek()
            if k3 != "num":
                self.fail("expected a repeat count after '*'", o3)
            self.take()
            if len(v3.lstrip("0")) > MAX_COUNT_DIGITS:
                self.fail(f"repeat count {v3} is too large", o3)
            count = int(v3)
            if len(seq) * count > MAX_LAYERS:
                self.fail(f"the pattern expands to more than {MAX_LAYERS} layers", o3)
            seq = seq * count
        return seq

    def _unknown(self, value: str, off: int) -> None:
        up = value.upper()
        if up in ("RELU", "TANH", "SIGMOID", "ACT", "ACTIVATION"):
            self.fail(f"{value} is not a layer of the pattern: activations are options "
                      "(conv.activation, fc.activation); remove it", off)
        near = difflib.get_close_matches(up, ("CONV", "POOL", "FC"), n=1, cutoff=0.5)
        hint = f" (did you mean {near[0]}?)" if near else ""
        self.fail(f"unknown layer {value!r}: expected CONV, POOL or FC{hint}", off)


def parse_pattern(text: str) -> Pattern:
    """Parse a pattern string into blocks (n_conv, has_pool) and the FC count K.

    Raises ``PatternError`` (a ``SpecError``) whose message shows the pattern with a caret
    under the bad column.
    """
    if not isinstance(text, str):
        raise SpecError(f"a pattern is a string, got {type(text).__name__}")
    layers = _Parser(text).parse()
    blocks: list[Block] = []
    n_conv, fc, pooled = 0, 0, False
    for word, off in layers:
        if word == "CONV":
            if fc:
                raise PatternError("CONV after FC: convolutional layers come before the fully "
                                   "connected ones", text, off)
            if pooled:
                blocks.append(Block(n_conv, True))
                n_conv, pooled = 0, False
            n_conv += 1
        elif word == "POOL":
            if fc:
                raise PatternError("POOL after FC: pools belong to the convolutional blocks",
                                   text, off)
            if n_conv == 0 or pooled:
                raise PatternError("POOL must follow a CONV (a block is CONVs then at most one "
                                   "POOL)", text, off)
            pooled = True
        else:
            if n_conv:
                blocks.append(Block(n_conv, pooled))
                n_conv, pooled = 0, False
            fc += 1
    if n_conv:
        blocks.append(Block(n_conv, pooled))
    if fc == 0:
        raise PatternError("the pattern needs at least one FC (the last FC is the output layer)",
                           text, len(text))
    return Pattern(tuple(blocks), fc)
