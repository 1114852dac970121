"""The word <-> id mapping every model, decoder and metric of one prepared dataset shares."""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

from trainers.errors import InputError

SPECIALS = ("<pad>", "<start>", "<end>", "<unk>")
# The special tokens' ids in every vocabulary: the one place the training loss, decoding and data
# preparation read them from.
PAD_ID, START_ID, END_ID, UNK_ID = range(len(SPECIALS))


class Vocab:
    """Ids 0-3 are `<pad>`, `<start>`, `<end>`, `<unk>`; words follow, most frequent first."""

    pad_id, start_id, end_id, unk_id = PAD_ID, START_ID, END_ID, UNK_ID

    def __init__(self, itos: Sequence[str]):
        itos = list(itos)
        if tuple(itos[: len(SPECIALS)]) != SPECIALS:
            raise InputError(f"vocabulary must start with {', '.join(SPECIALS)}; it starts with {itos[:4]}")
        if len(set(itos)) != len(itos):
            duplicates = sorted(word for word, count in Counter(itos).items() if count > 1)
            raise InputError(f"vocabulary lists these words twice: {', '.join(duplicates)}")
        self.itos = itos
        self.stoi = {word: index for index, word in enumerate(itos)}

    @classmethod
    def build(cls, captions: Iterable[Sequence[str]], min_word_freq: int) -> Vocab:
        """Words seen at least `min_word_freq` times, by frequency descending, then alphabetically."""
        counts = Counter(word for caption in captions for word in caption)
        kept = [word for word, count in counts.items() if count >= min_word_freq and word not in SPECIALS]
        kept.sort(key=lambda word: (-counts[word], word))
        return cls([*SPECIALS, *kept])

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos

    def encode(self, tokens: Sequence[str]) -> list[int]:
        """`<start> w... <end>` as ids; words outside the vocabulary become `<unk>`."""
        return [self.start_id, *(self.stoi.get(token, self.unk_id) for token in tokens), self.end_id]

    def decode(self, ids: Iterable[int]) -> str:
        """Words up to the first `<end>`, the other specials skipped, joined by spaces."""
        words = []
        for index in map(int, ids):
            if index == self.end_id:
                break
            if index >= len(SPECIALS):
                words.append(self.itos[index])
        return " ".join(words)

    def to_dict(self) -> dict:
        return {"itos": self.itos}

    @classmethod
    def from_dict(cls, data: dict) -> Vocab:
        if not isinstance(data, dict) or not isinstance(data.get("itos"), list):
            raise InputError("vocabulary must be an object with an 'itos' list of words")
        return cls(data["itos"])
