"""Text for the language-model notebook: two pinned corpora, a character tokenizer, a split.

The corpora ship inside the package (``lora_helpers/corpus/``, Python Software Foundation
License Version 2, see ``corpus/LICENSE_PSF.txt``), so nothing is downloaded and every Python
version reads the same characters:

- ``"docs"``: English prose, topics of Python 3.11.7's reference documentation (about 174k
  characters);
- ``"code"``: Python source, sixteen pure-Python modules of Python 3.11.7's standard library
  (about 193k characters).

Both are printable ASCII plus newline (``scripts/make_corpus.py`` wrote them and documents the
selection). A character tokenizer needs no download and no training: each distinct character is
one token.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources

import torch

from ._checks import check_int

__all__ = ["CORPORA", "load_corpus", "CharTokenizer", "TextSplit", "split_text", "sample_batch"]

CORPORA = {"docs": "python_docs.txt", "code": "python_stdlib.txt"}


def load_corpus(name: str) -> str:
    """Return the pinned corpus ``name`` (``"docs"`` or ``"code"``) as one string.

    The text is read from the package's data files, never from the running Python, so it is the
    same on every Python version. Lines end in ``"\\n"``.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {name!r}; one of {sorted(CORPORA)}")
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; choose one of {sorted(CORPORA)}")
    text = resources.files(__package__).joinpath("corpus", CORPORA[name]).read_text(encoding="ascii")
    return text.replace("\r\n", "\n")  # a checkout that converted line endings reads the same


class CharTokenizer:
    """One token per character: ``encode`` maps a string to ids, ``decode`` maps them back.

    Args:
        text_or_chars: the characters of the vocabulary, as a string (its distinct characters
            are used, e.g. a whole corpus) or an iterable of single characters.

    The vocabulary is sorted by code point, so the same set of characters always gives the same
    ids. ``chars[i]`` is the character with id ``i``.
    """

    def __init__(self, text_or_chars: str | Iterable[str]) -> None:
        if isinstance(text_or_chars, str):
            chars = set(text_or_chars)
        elif isinstance(text_or_chars, Iterable):
            chars = list(text_or_chars)
            bad = [c for c in chars if not (isinstance(c, str) and len(c) == 1)]
            if bad:
                raise TypeError(f"the vocabulary must be single characters, got {bad[:5]!r}; "
                                "pass a string, e.g. CharTokenizer(text)")
            chars = set(chars)
        else:
            raise TypeError(f"expected a string or an iterable of characters, got "
                            f"{type(text_or_chars).__name__}; e.g. CharTokenizer(text)")
        if not chars:
            raise ValueError("the vocabulary is empty: pass a non-empty text")
        self.chars: tuple[str, ...] = tuple(sorted(chars))
        self.stoi: dict[str, int] = {c: i for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        """The number of distinct characters, i.e. of token ids ``0 .. vocab_size - 1``."""
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        """``text`` (length ``n``) → token ids, a ``torch.long`` tensor of shape ``(n,)``.

        Raises ``ValueError`` naming every character that is not in the vocabulary (and where
        the first one is), rather than skipping it silently.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode takes a string, got {type(text).__name__}")
        unknown = sorted(set(text) - self.stoi.keys())
        if unknown:
            first = min(text.index(c) for c in unknown)
            raise ValueError(f"characters {unknown!r} are not in the vocabulary (first at "
                             f"position {first}); remove them, or build the tokenizer from a "
                             f"text that contains them")
        return torch.tensor([self.stoi[c] for c in text], dtype=torch.long)  # (n,)

    def decode(self, ids: torch.Tensor | Sequence[int]) -> str:
        """Token ids ``(n,)`` (a 1-D integer tensor or a sequence of ints) → a string of length ``n``."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1 or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
                raise ValueError(f"decode takes a 1-D integer tensor, got shape {tuple(ids.shape)} "
                                 f"and dtype {ids.dtype}; decode one row at a time")
            ids = ids.tolist()
        elif isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
            raise TypeError(f"decode takes a 1-D tensor or a sequence of ints, got {type(ids).__name__}")
        bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, numbers.Integral)
               or not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ids {bad[:5]!r} are not token ids: need integers in "
                             f"[0, {self.vocab_size})")
        return "".join(self.chars[i] for i in ids)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


@dataclass(frozen=True)
class TextSplit:
    """Train/validation/test text from ``split_text``.

    ``blocks[i]`` names the part (``"train"``, ``"validation"`` or ``"test"``) that block ``i``
    of the text went to; each part is its blocks joined in the text's order.
    """

    train: str
    validation: str
    test: str
    blocks: tuple[str, ...]


def split_text(text: str, *, n_blocks: int = 20, n_validation: int = 2, n_test: int = 2,
               seed: int = 0) -> TextSplit:
    """Split ``text`` into train/validation/test by whole contiguous blocks, chosen by a seed.

    The text is cut into ``n_blocks`` contiguous blocks of (almost) equal length (block ``i`` is
    ``text[i * n // n_blocks : (i + 1) * n // n_blocks]``). A seeded permutation picks
    ``n_validation`` blocks for validation and ``n_test`` for test; the rest are for training.
    Because whole blocks are held out (not random characters or windows), the validation and
    test text is text the model never saw in training, apart from the one boundary each block
    shares with its neighbours.

    Joining a part's blocks creates a seam where two non-adjacent blocks meet; a window across
    a seam is slightly unnatural text (a few windows in thousands).

    Args:
        text: the corpus.
        n_blocks: how many blocks to cut (more blocks: a more representative sample of the
            text in each part).
        n_validation, n_test: how many blocks each held-out part gets (at least 1 each, and at
            least one block must remain for training).
        seed: seeds the ``torch.Generator`` of the permutation.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    n_blocks = check_int(n_blocks, "n_blocks", low=3)
    n_validation = check_int(n_validation, "n_validation")
    n_test = check_int(n_test, "n_test")
    seed = check_int(seed, "seed", low=0)
    if n_validation + n_test >= n_blocks:
        raise ValueError(f"n_validation + n_test = {n_validation + n_test} leaves no training "
                         f"block out of n_blocks={n_blocks}; use more blocks or hold out fewer")
    if len(text) < n_blocks:
        raise ValueError(f"text of {len(text)} characters is too short for n_blocks={n_blocks}")
    n = len(text)
    pieces = [text[i * n // n_blocks:(i + 1) * n // n_blocks] for i in range(n_blocks)]
    order = torch.randperm(n_blocks, generator=torch.Generator().manual_seed(seed)).tolist()
    parts = ["train"] * n_blocks
    for i in order[:n_validation]:
        parts[i] = "validation"
    for i in order[n_validation:n_validation + n_test]:
        parts[i] = "test"

    def join(part: str) -> str:
        return "".join(piece for piece, p in zip(pieces, parts) if p == part)

    return TextSplit(join("train"), join("validation"), join("test"), tuple(parts))


def sample_batch(data: torch.Tensor, context: int, batch_size: int,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of token ids for next-token prediction.

    Args:
        data: token ids ``(n,)``, ``torch.long``.
        context: window length ``T``; needs ``n > T``.
        batch_size: number of windows ``B``.
        generator: seeds the window starts (uniform over ``0 .. n - T - 1``).
    Returns:
        ``(x, y)``, both ``(B, T)``: ``y`` is ``x`` shifted by one character, so ``y[:, t]`` is
        the character that follows ``x[:, :t + 1]``.
    """
    if not isinstance(data, torch.Tensor) or data.dim() != 1 or data.dtype != torch.long:
        raise TypeError("data must be a 1-D torch.long tensor of token ids (tokenizer.encode(text)), "
                        f"got {getattr(data, 'dtype', type(data).__name__)} of shape "
                        f"{tuple(getattr(data, 'shape', ()))}")
    context = check_int(context, "context")
    batch_size = check_int(batch_size, "batch_size")
    if len(data) <= context:
        raise ValueError(f"data has {len(data)} tokens, too few for context={context}: "
                         f"need more than {context}")
    starts = torch.randint(len(data) - context, (batch_size,), generator=generator)  # (B,)
    offsets = torch.arange(context + 1)  # (T + 1,)
    windows = data[starts[:, None] + offsets]  # (B, T + 1)
    return windows[:, :-1], windows[:, 1:]  # (B, T), (B, T)
