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


class SpaceTokenizer:
    """SentencePiece-like: token i is the word WORDS[i], ``▁`` marks a leading space, and a
    decode drops the space at the start of its text (as Llama's and Mistral's do)."""

    WORDS = ("▁Hello", ",", "▁world", "▁again", "!", "▁é", "x")

    def decode(self, ids, skip_special_tokens=True, clean_up_tokenization_spaces=False):
        return "".join(self.WORDS[i] for i in ids).replace("▁", " ").removeprefix(" ")


class WordTokenizer:
    """Token i is the word ``w<i>``; a decode joins the words with spaces and skips the
    special token 0 (as a WordPiece decoder does), so a window's text has no leading space."""

    def decode(self, ids, skip_special_tokens=True, clean_up_tokenization_spaces=False):
        return " ".join(f"w{i}" for i in ids if not (skip_special_tokens and i == 0))


def test_a_token_that_decodes_to_nothing_does_not_lose_the_separator():
    tok = WordTokenizer()
    ids = [4, 0, 2, 0, 0, 7, 3]
    for cuts in ([1, 2, 3, 4, 5, 6], [2, 5], [1, 3]):
        out, a = streamed(tok, ids, cuts)
        assert out == tok.decode(ids) == a.text, cuts


class SwappingTokenizer(CharTokenizer):
    """Decodes ``ab`` as ``ba`` wherever it occurs: text already released can change, which
    no stream can take back, and a window's text need not begin with what its first tokens
    decoded to alone."""

    def decode(self, ids, **kw):
        return super().decode(ids, **kw).replace("ab", "ba")


def test_a_window_that_disagrees_with_its_prefix_falls_back_to_the_whole_text():
    tok = SwappingTokenizer()
    ids = toks("xyzab cab ab")
    for cuts in ([4, 5, 7, 8, 11], list(range(1, len(ids)))):
        out, a = streamed(tok, ids, cuts)
        assert a.text == tok.decode(ids) and len(out) == len(a.text), cuts


class CountingTokenizer:
    """Wraps a tokenizer and records how many ids each decode was given."""

    def __init__(self, inner):
        self.inner = inner
        self.sizes: list[int] = []

    def decode(self, ids, **kw):
        self.sizes.append(len(ids))
        return self.inner.decode(ids, **kw)


def streamed(tokenizer, ids, cuts, stop=()):
    a = TextAssembler(tokenizer, stop)
    out, start = "", 0
    for end in [*cuts, len(ids)]:
        out += a.push(ids[start:end])
        start = end
    return out + a.flush(), a


def test_windowed_decoding_keeps_sentencepiece_spaces():
    tok = SpaceTokenizer()
    ids = [0, 1, 2, 3, 4, 5, 6, 2, 0]
    whole = tok.decode(ids)
    for cuts in ([], [1], [1, 2, 3, 4, 5, 6, 7, 8], [3, 5], [2, 7]):
        out, a = streamed(tok, ids, cuts)
        assert out == whole == a.text, cuts


def test_each_round_decodes_a_window_not_the_whole_text():
    tok = CountingTokenizer(CharTokenizer())
    ids = toks("the quick brown fox jumps over the lazy dog " * 20)
    out, _ = streamed(tok, ids, list(range(3, len(ids), 3)))
    assert out == "".join(map(chr, ids))
    rounds = tok.sizes[:-1]  # the last is flush's one whole decode
    assert max(rounds) <= 9, max(rounds)  # two rounds' tokens, and the newest round alone


def test_windowed_decoding_equals_the_whole_decode_on_the_real_tokenizer(tiny_bpe_llm):
    """Random round sizes over real text with multi-byte characters split across tokens:
    the streamed text is exactly one whole decode, stop strings included."""
    import random

    tok = tiny_bpe_llm.tokenizer
    text = (
        "Grüße aus Köln! 東京は晴れ。 Emoji: 🚀🎉 done.\n"
        "def f(x):\n    return x ** 2  # naïve café\n" * 3
    )
    ids = tok.encode(text, add_special_tokens=False)
    whole = tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    rng = random.Random(0)
    for _ in range(30):
        cuts = sorted(rng.sample(range(1, len(ids)), rng.randint(1, len(ids) // 2)))
        out, a = streamed(tok, ids, cuts)
        assert out == whole == a.text
        out, a = streamed(tok, ids, cuts, stop=["café"])
        assert out == whole[: whole.index("café")] == a.text
