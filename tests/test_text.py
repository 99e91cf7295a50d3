import re

import pytest

from alignspec.errors import AlignspecError
from alignspec.text import TextAssembler, check_stop


class CharTokenizer:
    """Token i decodes to chr(i); token 0 is special (skipped)."""

    def decode(self, ids, skip_special_tokens=True, clean_up_tokenization_spaces=False):
        return "".join(chr(i) for i in ids if not (skip_special_tokens and i == 0))


def toks(s: str) -> list[int]:
    return [ord(c) for c in s]


def test_stream_without_stop_releases_everything():
    a = TextAssembler(CharTokenizer())
    assert a.push(toks("hel")) == "hel"
    assert a.push(toks("lo")) == "lo"
    assert a.flush() == ""
    assert a.text == "hello"


def test_stop_string_is_never_emitted_even_across_rounds():
    a = TextAssembler(CharTokenizer(), stop=["END"])
    out = a.push(toks("abcE"))
    out += a.push(toks("N"))
    assert "E" not in out  # held back: could be the start of END
    out += a.push(toks("Dxyz"))
    assert out == "abc"
    assert a.stopped_at == 3
    assert a.flush() == ""
    assert a.text == "abc"
    assert a.token_ids_through_stop() == toks("abcEND")


def test_false_alarm_prefix_is_released_later():
    a = TextAssembler(CharTokenizer(), stop=["END"])
    out = a.push(toks("aE"))
    out += a.push(toks("Nb"))
    out += a.flush()
    assert out == "aENb" and a.stopped_at is None


def test_earliest_of_several_stops_wins():
    a = TextAssembler(CharTokenizer(), stop=["yz", "x"])
    assert a.push(toks("wxyz")) == "w"
    assert a.text == "w"


def test_the_stop_that_completes_first_wins_however_the_text_arrives():
    """A longer stop that begins earlier but completes later loses, in one push or many,
    so every method cuts the same text whatever its rounds commit."""
    text = "Handler usable"
    at_once = TextAssembler(CharTokenizer(), stop=["ndler ", "d"])
    out = at_once.push(toks(text)) + at_once.flush()
    one_by_one = TextAssembler(CharTokenizer(), stop=["ndler ", "d"])
    streamed = "".join(one_by_one.push(toks(ch)) for ch in text) + one_by_one.flush()
    assert out == streamed == "Han" and at_once.text == one_by_one.text == "Han"


def test_incomplete_utf8_is_held_back():
    class Partial(CharTokenizer):
        def decode(self, ids, **kw):
            s = super().decode(ids, **kw)
            return s.replace("#", "\ufffd")

    a = TextAssembler(Partial())
    assert a.push(toks("ab#")) == "ab"


def test_a_string_stop_is_one_stop_string_not_its_characters():
    a = TextAssembler(CharTokenizer(), stop="dog")
    assert a.push(toks("good hotdog!")) == "good hot"
    assert a.text == "good hot"


def test_stop_none_and_empty_strings_mean_no_stop():
    for stop in (None, "", [], ["", ""]):
        a = TextAssembler(CharTokenizer(), stop=stop)
        assert a.stop == []
        assert a.push(toks("dog")) == "dog"


@pytest.mark.parametrize(
    ("stop", "message"),
    [
        (5, "stop must be a string or a list of strings, got int"),
        (b"dog", "got bytes"),
        (["a", None], "stop[1] must be a string, got NoneType"),
        ("\udcff", "the stop string is not valid Unicode text"),
        (["ok", "\ud800x"], "stop string 1 is not valid Unicode text"),
    ],
)
def test_bad_stop_is_one_sentence(stop, message):
    with pytest.raises(AlignspecError, match=re.escape(message)):
        check_stop(stop)
    assert check_stop(("a", "bc")) == ("a", "bc")


class ByteTokenizer:
    """Token i is byte i; decoding replaces unfinished UTF-8 as real tokenizers do."""

    def decode(self, ids, skip_special_tokens=True, clean_up_tokenization_spaces=False):
        return bytes(ids).decode("utf-8", "replace")


def test_an_unfinished_character_never_completes_a_stop_string():
    # "é" arrives as two tokens; in between the text ends in U+FFFD
    a = TextAssembler(ByteTokenizer(), stop=["\ufffd", "x\ufffd"])
    out = a.push(list(b"ax"))
    out += a.push(list("é".encode())[:1])
    out += a.push(list("é".encode())[1:] + list(b"b"))
    out += a.flush()
    assert out == "axéb" and a.stopped_at is None


def test_a_real_replacement_character_at_the_end_still_stops():
    a = TextAssembler(ByteTokenizer(), stop="\ufffd")
    out = a.push(list(b"ok\xff"))
    out += a.flush()
    assert out == "ok" and a.text == "ok" and a.stopped_at == 2
    assert a.token_ids_through_stop() == list(b"ok\xff")
