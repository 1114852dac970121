import pytest
from hypothesis import given
from hypothesis import strategies as st

from trainers.data.vocab import SPECIALS, Vocab
from trainers.errors import InputError


def test_specials_first_then_words_by_frequency_then_alphabet():
    vocab = Vocab.build([["b", "a", "c"], ["c", "b"], ["c", "d"]], min_word_freq=1)
    assert vocab.itos[:4] == ["<pad>", "<start>", "<end>", "<unk>"]
    assert (vocab.pad_id, vocab.start_id, vocab.end_id, vocab.unk_id) == (0, 1, 2, 3)
    assert vocab.itos[4:] == ["c", "b", "a", "d"]


def test_rare_words_become_unk():
    vocab = Vocab.build([["dog", "cat"], ["dog"]], min_word_freq=2)
    assert vocab.itos[4:] == ["dog"]
    assert vocab.encode(["cat", "dog"]) == [vocab.start_id, vocab.unk_id, vocab.stoi["dog"], vocab.end_id]


def test_decode_stops_at_end_and_skips_specials():
    vocab = Vocab.build([["a", "dog"]], min_word_freq=1)
    ids = [vocab.start_id, vocab.stoi["a"], vocab.unk_id, vocab.stoi["dog"], vocab.end_id, vocab.stoi["a"], 0]
    assert vocab.decode(ids) == "a dog"


def test_a_vocabulary_without_the_specials_first_is_rejected():
    with pytest.raises(InputError, match="must start with"):
        Vocab.from_dict({"itos": ["dog", "<pad>", "<start>", "<end>", "<unk>"]})
    with pytest.raises(InputError, match="twice: dog"):
        Vocab([*SPECIALS, "dog", "dog"])


words = st.text(alphabet="abcdefghij'", min_size=1, max_size=6)


@given(corpus=st.lists(st.lists(words, max_size=8), min_size=1, max_size=10), min_freq=st.integers(1, 3))
def test_known_words_round_trip_and_unknown_words_map_to_unk(corpus, min_freq):
    vocab = Vocab.build(corpus, min_word_freq=min_freq)
    assert Vocab.from_dict(vocab.to_dict()) == vocab
    for caption in corpus:
        ids = vocab.encode(caption)
        assert ids[0] == vocab.start_id and ids[-1] == vocab.end_id and len(ids) == len(caption) + 2
        assert vocab.decode(ids) == " ".join(word for word in caption if word in vocab.stoi)
