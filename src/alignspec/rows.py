"""A verify forward's logits, computed row by row as a verifier reads them (the lazy LM head).

The decoder must run over every tree row (each row's hidden state feeds its descendants), but
only the rows on the accepted path are ever read: greedy, lossless sampling and conditional
verification all walk from the root. On the default model the LM head is a fifth of the
weights and, over a 16-row tree, about a third of the forward's arithmetic, so it runs only on
the rows asked for. A missed row is computed together with its first-child chain (the drafter
puts its most likely child first), so a chain draft costs one LM-head call, and a tree costs
one more call each time the walk turns into a later sibling.

Every row's logits are computed from that row's hidden state alone, by the same kernel whatever
the batch, so asking for rows in a different order or grouping cannot change a result.

A drafter may :meth:`RowLogits.attach` hidden states of its own (AASD's prompt rows whose
top-m it will look up next round) to the first LM-head call: at a few rows that call costs
about one read of the head's weights whatever the row count, so the rows ride along almost
free instead of costing the drafter a read of their own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from alignspec.tree import DraftTree

Head = Callable[[torch.Tensor], torch.Tensor]
#: ``(logits [k, V], rows) -> logits``: applied once to freshly computed rows (e.g. the
#: repetition penalty, which depends on each row's own context)
Transform = Callable[[torch.Tensor, list[int]], torch.Tensor]


def row_index(rows: list[int]) -> slice | list[int]:
    """``rows`` as a slice where they are consecutive (a verify's accepted path, a lone row).

    Right after a forward has streamed the weights through the caches, indexing a tensor or an
    array with a list cost 20-30 us a call on a 2-core Xeon, a slice a fraction of that; the
    drafters keep a few rows of every verify.
    """
    if rows and rows == list(range(rows[0], rows[0] + len(rows))):
        return slice(rows[0], rows[-1] + 1)
    return rows


@dataclass
class ExtraRows:
    """Hidden states ``[k, hidden]`` whose logits ``receive`` takes from the next head call."""

    hidden: torch.Tensor
    receive: Callable[[torch.Tensor], None]


class RowLogits:
    """Logits ``[num_rows, V]`` of one forward, materialised per row on first use."""

    def __init__(
        self,
        hidden: torch.Tensor | None,
        head: Head | None,
        tree: DraftTree | None = None,
        *,
        full: torch.Tensor | None = None,
    ) -> None:
        self._hidden = hidden
        self._head = head
        self._full = full
        self.num_rows = int(full.shape[0] if full is not None else hidden.shape[0])  # type: ignore[union-attr]
        self._first_child = _first_children(tree, self.num_rows)
        self._rows: dict[int, torch.Tensor] = {}
        self.transform: Transform | None = None
        self._extra: ExtraRows | None = None
        #: rows the LM head actually ran on, and the seconds it took (part of the forward's
        #: cost, not the engine's overhead)
        self.computed = 0
        self.head_seconds = 0.0

    @classmethod
    def of(cls, logits: torch.Tensor) -> RowLogits:
        """Logits that already exist (a backend that always computes every row)."""
        return cls(None, None, full=logits if logits.dim() == 2 else logits[None])

    @classmethod
    def wrap(cls, logits: RowLogits | torch.Tensor) -> RowLogits:
        """Accept a ``[rows, V]`` tensor wherever row logits are expected."""
        return logits if isinstance(logits, RowLogits) else cls.of(logits)

    @property
    def device(self) -> torch.device:
        source = self._full if self._full is not None else self._hidden
        assert source is not None
        return source.device

    def row(self, i: int) -> torch.Tensor:
        """Logits ``[V]`` of row ``i``."""
        if i not in self._rows:
            self._compute(self._chain_from(i))
        return self._rows[i]

    def argmax(self, i: int) -> int:
        """Row ``i``'s argmax (:func:`argmax`)."""
        return argmax(self.row(i))

    def rows(self, idx: Sequence[int]) -> torch.Tensor:
        """Logits ``[len(idx), V]`` of rows ``idx``, computing the missing ones in one call."""
        idx = list(idx)
        missing = [i for i in dict.fromkeys(idx) if i not in self._rows]
        if missing == idx:  # all new: the head call's own output, without a copy
            return self._compute(missing)
        if missing:
            self._compute(missing)
        return torch.stack([self._rows[i] for i in idx])

    def dense(self) -> torch.Tensor:
        """Every row (for rules that need them all)."""
        return self.rows(range(self.num_rows))

    @property
    def takes_extra_rows(self) -> bool:
        """Whether :meth:`attach` can run rows with a head call here (not on whole logits)."""
        return self._full is None

    def attach(self, extra: ExtraRows) -> None:
        """Run ``extra`` through the LM head with the first rows computed, and hand it its
        logits (untransformed). Logits that already exist have no head call to share: then
        ``extra`` is dropped and its owner computes what it still needs itself."""
        if self.takes_extra_rows:
            self._extra = extra

    def _chain_from(self, i: int) -> list[int]:
        chain = [i]
        nxt = self._first_child[i]
        while nxt is not None and nxt not in self._rows:
            chain.append(nxt)
            nxt = self._first_child[nxt]
        return chain

    def _compute(self, rows: list[int]) -> torch.Tensor:
        """Logits ``[len(rows), V]`` of ``rows``, each also kept for :meth:`row`."""
        if self._full is not None:
            values = self._full[rows]
        else:
            assert self._hidden is not None and self._head is not None
            start = time.perf_counter()
            hidden = self._hidden[rows]  # a copy: a slice of an inference tensor would stay one
            extra, self._extra = self._extra, None
            if extra is not None:
                hidden = torch.cat([hidden, extra.hidden.to(hidden.dtype)])
            values = self._head(hidden)
            self.head_seconds += time.perf_counter() - start
            self.computed += hidden.shape[0]
            if extra is not None:
                extra.receive(values[len(rows) :])
                values = values[: len(rows)]
        if self.transform is not None:
            values = self.transform(values, rows)
        for r, v in zip(rows, values, strict=True):
            self._rows[r] = v
        return values


def argmax(row: torch.Tensor) -> int:
    """The first index of a 1-D tensor's largest value (a NaN counts as largest), as
    ``torch.argmax`` gives it. An fp32 CPU row goes through numpy: torch's argmax over a
    49k vocabulary took 65 us here against numpy's 3, and greedy decoding reads one per
    token."""
    if row.device.type == "cpu" and row.dtype == torch.float32:
        return int(np.argmax(row.numpy()))
    return int(row.argmax())


def _first_children(tree: DraftTree | None, num_rows: int) -> list[int | None]:
    first: list[int | None] = [None] * num_rows
    if tree is None:
        return first
    for child, parent in enumerate(tree.parents, start=1):
        if first[parent] is None:
            first[parent] = child
    return first
