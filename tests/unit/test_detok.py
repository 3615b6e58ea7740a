"""Incremental detokenization and stop strings across token boundaries."""

from __future__ import annotations

from tokenmill.engine.detok import Detokenizer


def run(pieces: list[bytes], stops: tuple[str, ...]) -> tuple[list[str], str | None, str]:
    d = Detokenizer(pieces, stops)
    emitted: list[str] = []
    for i in range(len(pieces)):
        text, stop = d.push(i)
        emitted.append(text)
        if stop:
            return emitted, stop, "".join(emitted)
    emitted.append(d.flush())
    return emitted, None, "".join(emitted)


def test_stop_string_split_across_tokens_is_cut_and_never_shown() -> None:
    emitted, stop, text = run([b"Hello ", b"wor", b"ld", b" again"], ("world",))
    assert stop == "world"
    assert text == "Hello "
    assert all("wor" not in e for e in emitted)


def test_held_back_text_is_released_when_it_is_not_a_stop() -> None:
    emitted, stop, text = run([b"ab", b"c", b"d"], ("cx",))
    assert stop is None and text == "abcd"
    assert emitted[1] == ""  # "c" could have started "cx"


def test_earliest_stop_wins() -> None:
    _, stop, text = run([b"one two three"], ("three", "two"))
    assert stop == "two" and text == "one "


def test_utf8_split_across_tokens() -> None:
    snow = "☃".encode()
    _, _, text = run([b"a", snow[:1], snow[1:], b"b"], ())
    assert text == "a☃b"


def test_no_stops_passes_through() -> None:
    emitted, stop, text = run([b"x", b"y"], ())
    assert emitted[:2] == ["x", "y"] and stop is None and text == "xy"
