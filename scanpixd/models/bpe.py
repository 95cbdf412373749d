"""CLIP's byte-pair tokenizer without torch: what open_clip's ``SimpleTokenizer`` computes.

The rules are OpenAI CLIP's (MIT licence), as open_clip ships them with its default
``clean="lower"``: ftfy and HTML unescaping, whitespace collapsed, lower case, then the
byte-level BPE over open_clip's own vocabulary file.  Ids come back as a numpy array of
``context_length`` columns: start token, the text's tokens, end token, zeros after; a text
too long is cut and ends with the end token, as open_clip's truncation does.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["VOCABULARY_SIZE", "BpeTokenizer", "vocabulary_file"]

_MERGES = 49152 - 256 - 2  # the vocabulary's merges CLIP uses (its first line is a header)
VOCABULARY_SIZE = 2 * 256 + _MERGES + 2  # byte symbols, each also word-final, merges, specials
_CACHE_LIMIT = 50_000


def vocabulary_file() -> Path | None:
    """open_clip's ``bpe_simple_vocab_16e6.txt.gz``, found without importing open_clip."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / "bpe_simple_vocab_16e6.txt.gz"
        if candidate.is_file():
            return candidate
    return None


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """Every byte as a printable character, so BPE never sees whitespace or controls."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


class BpeTokenizer:
    """``tokenizer(["a dog"])`` -> int64 array of shape (1, context_length)."""

    def __init__(self, vocabulary: Path, context_length: int = 77):
        import regex

        with gzip.open(vocabulary) as fh:
            lines = fh.read().decode("utf-8").split("\n")[1:_MERGES + 1]
        merges = [tuple(line.split()) for line in lines]
        symbols = list(_bytes_to_unicode().values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
        vocab += ["<start_of_text>", "<end_of_text>"]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.ranks = {pair: i for i, pair in enumerate(merges)}
        self.sot, self.eot = self.encoder["<start_of_text>"], self.encoder["<end_of_text>"]
        self.context_length = context_length
        self.pattern = regex.compile(
            r"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"
            r"[^\s\p{L}\p{N}]+", regex.IGNORECASE)
        self._byte_chars = _bytes_to_unicode()
        self._cache: dict[str, list[int]] = {}
        self._lock = threading.Lock()

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.sot, *self.encode(text), self.eot]
            if len(ids) > self.context_length:
                ids = ids[:self.context_length]
                ids[-1] = self.eot
            out[row, :len(ids)] = ids
        return out

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for word in self.pattern.findall(_clean(text)):
            ids.extend(self._word_ids(word))
        return ids

    def _word_ids(self, word: str) -> list[int]:
        with self._lock:
            found = self._cache.get(word)
        if found is None:
            chars = "".join(self._byte_chars[b] for b in word.encode("utf-8"))
            found = [self.encoder[piece] for piece in self._merge(chars)]
            with self._lock:
                if len(self._cache) >= _CACHE_LIMIT:
                    self._cache.clear()
                self._cache[word] = found
        return found

    def _merge(self, chars: str) -> list[str]:
        """The word's symbols after applying merges lowest rank first, CLIP's way."""
        if chars in ("<start_of_text>", "<end_of_text>"):
            return [chars]
        word = [*chars[:-1], chars[-1] + "</w>"]
        while len(word) > 1:
            pairs = set(zip(word, word[1:], strict=False))
            best = min(pairs, key=lambda pair: self.ranks.get(pair, _MERGES + 1))
            if best not in self.ranks:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return word


def _clean(text: str) -> str:
    """open_clip's ``clean="lower"``: ftfy, HTML entities twice, whitespace, lower case."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()
