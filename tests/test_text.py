"""Tests for lora_helpers.text: pinned corpora, the character tokenizer, the block split."""

import hashlib
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lora_helpers.text import CORPORA, CharTokenizer, load_corpus, sample_batch, split_text

# The corpora are pinned: these digests change only if someone rewrites the files, never with
# the Python version that runs the tests.
SHA256 = {
    "docs": "97a9b87cc08be86eb9f45939c20819eb07ccfe61123db28375fb5238130cf794",
    "code": "4fb97778feacc4271de3567b1edb08fd09ce4791fe523880d0556fc1538ca945",
}
LENGTH = {"docs": 174_479, "code": 192_920}
CORPUS_DIR = Path(__file__).resolve().parents[1] / "lora_helpers" / "corpus"


# ---------------------------------------------------------------- corpora
@pytest.mark.parametrize("name", sorted(CORPORA))
def test_corpus_is_pinned(name):
    text = load_corpus(name)
    assert len(text) == LENGTH[name]
    assert hashlib.sha256(text.encode("ascii")).hexdigest() == SHA256[name]


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_corpus_is_printable_ascii_with_newlines(name):
    text = load_corpus(name)
    assert set(text) <= {chr(c) for c in range(32, 127)} | {"\n"}
    assert "\r" not in text and "\t" not in text


def test_the_two_corpora_differ_in_kind():
    docs, code = load_corpus("docs"), load_corpus("code")
    assert code.count("def ") > 5 * docs.count("def ")
    assert docs.count(". ") > 2 * code.count(". ")


def test_corpus_files_small_and_licensed():
    sizes = [p.stat().st_size for p in CORPUS_DIR.glob("*.txt") if p.name != "LICENSE_PSF.txt"]
    assert len(sizes) == len(CORPORA) and sum(sizes) < 500_000
    notice = (CORPUS_DIR / "LICENSE_PSF.txt").read_text(encoding="utf-8")
    assert "PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2" in notice
    assert "3.11.7" in notice
    assert "Python Software Foundation;\nAll Rights Reserved" in notice


def test_load_corpus_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown corpus 'prose'.*'code', 'docs'"):
        load_corpus("prose")
    with pytest.raises(TypeError, match="must be a string"):
        load_corpus(0)


# ---------------------------------------------------------------- tokenizer
def test_tokenizer_on_both_corpora():
    tok = CharTokenizer(load_corpus("docs") + load_corpus("code"))
    assert tok.vocab_size == len(tok) == 96  # printable ASCII (95) and newline
    assert list(tok.chars) == sorted(tok.chars)
    ids = tok.encode("def f(x):\n")
    assert ids.dtype == torch.long and ids.shape == (10,)
    assert tok.decode(ids) == "def f(x):\n"
    assert repr(tok) == "CharTokenizer(vocab_size=96)"


def test_tokenizer_from_characters_equals_from_text():
    assert CharTokenizer("hello").chars == CharTokenizer(["o", "l", "h", "e"]).chars == ("e", "h", "l", "o")


@settings(max_examples=50)  # a 12-character alphabet: 50 strings exercise every character
@given(st.text(alphabet="abc xyz\n()_=", min_size=1))
def test_encode_decode_roundtrip(text):
    tok = CharTokenizer("abc xyz\n()_=")
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.decode(ids.tolist()) == text
    assert all(tok.chars[i] == c for i, c in zip(ids.tolist(), text))


def test_encode_names_unknown_characters_and_where():
    tok = CharTokenizer("abc")
    with pytest.raises(ValueError, match=r"\['d', 'é'\] are not in the vocabulary \(first at position 2\)"):
        tok.encode("abdcé")
    with pytest.raises(TypeError, match="encode takes a string"):
        tok.encode(["a"])


def test_decode_refuses_bad_ids():
    tok = CharTokenizer("abc")
    with pytest.raises(ValueError, match=r"ids \[3\] are not token ids: need integers in \[0, 3\)"):
        tok.decode([0, 3])
    with pytest.raises(ValueError, match=r"ids \[-1\]"):
        tok.decode(torch.tensor([-1]))
    with pytest.raises(ValueError, match="1-D integer tensor"):
        tok.decode(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="1-D integer tensor"):
        tok.decode(torch.tensor([0.0]))
    with pytest.raises(TypeError, match="sequence of ints"):
        tok.decode("ab")
    with pytest.raises(ValueError, match="not token ids"):
        tok.decode([True])


def test_tokenizer_refuses_bad_vocabularies():
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer("")
    with pytest.raises(TypeError, match="single characters"):
        CharTokenizer(["ab", "c"])
    with pytest.raises(TypeError, match="a string or an iterable"):
        CharTokenizer(3)


# ---------------------------------------------------------------- split
def test_split_is_contiguous_blocks_seeded():
    text = load_corpus("docs")
    split = split_text(text, n_blocks=20, n_validation=2, n_test=2, seed=0)
    assert split.blocks.count("validation") == split.blocks.count("test") == 2
    assert len(split.train) + len(split.validation) + len(split.test) == len(text)
    n = len(text)
    pieces = [text[i * n // 20:(i + 1) * n // 20] for i in range(20)]
    for part in ("train", "validation", "test"):
        expected = "".join(p for p, b in zip(pieces, split.blocks) if b == part)
        assert getattr(split, part) == expected
    assert split == split_text(text, seed=0)
    assert split.blocks != split_text(text, seed=1).blocks


@settings(max_examples=50)
@given(st.integers(3, 40), st.integers(1, 5), st.integers(1, 5), st.integers(0, 1000))
def test_split_partitions_any_text(n_blocks, n_val, n_test, seed):
    if n_val + n_test >= n_blocks:
        return
    text = "".join(chr(65 + i % 26) for i in range(1000))
    split = split_text(text, n_blocks=n_blocks, n_validation=n_val, n_test=n_test, seed=seed)
    assert split.blocks.count("validation") == n_val and split.blocks.count("test") == n_test
    assert sorted(split.train + split.validation + split.test) == sorted(text)


def test_split_refuses_bad_arguments():
    with pytest.raises(ValueError, match="leaves no training block"):
        split_text("x" * 100, n_blocks=4, n_validation=2, n_test=2)
    with pytest.raises(ValueError, match="too short"):
        split_text("xy", n_blocks=3, n_validation=1, n_test=1)
    with pytest.raises(TypeError, match="n_blocks must be an int"):
        split_text("x" * 100, n_blocks=10.0)
    with pytest.raises(TypeError, match="text must be a string"):
        split_text(b"x" * 100)


# ---------------------------------------------------------------- batches
def test_sample_batch_targets_are_inputs_shifted_by_one():
    data = torch.arange(100)
    x, y = sample_batch(data, context=8, batch_size=5, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (5, 8) and x.dtype == torch.long
    assert torch.equal(y, x + 1)  # data[i] == i, so the next token is x + 1
    assert torch.equal(x[:, 1:], y[:, :-1])
    x2, _ = sample_batch(data, 8, 5, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)


def test_sample_batch_reaches_the_last_token():
    data = torch.arange(10)
    _, y = sample_batch(data, context=9, batch_size=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(y, torch.arange(1, 10).expand(3, 9))


def test_sample_batch_refuses_bad_input():
    with pytest.raises(ValueError, match="too few for context=10"):
        sample_batch(torch.arange(10), context=10, batch_size=2)
    with pytest.raises(TypeError, match="1-D torch.long"):
        sample_batch(torch.zeros(10), context=2, batch_size=2)
    with pytest.raises(TypeError, match="context must be an int"):
        sample_batch(torch.arange(10), context=2.5, batch_size=2)


def test_pyproject_packages_the_corpus_files():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11; the check is the same on 3.10
    import fnmatch
    root = CORPUS_DIR.parents[1]
    config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["lora_helpers"]
    files = [p.relative_to(CORPUS_DIR.parent).as_posix() for p in CORPUS_DIR.glob("*.txt")]
    assert len(files) == len(CORPORA) + 1  # the corpora and LICENSE_PSF.txt
    assert all(any(fnmatch.fnmatch(f, pat) for pat in patterns) for f in files)
