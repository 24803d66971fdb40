"""Candidate tokenizers trained from a streamed sample of the curated train split.

Every candidate is byte-complete, so no input is ever unknown: bpe and unigram run over the
256 byte-level symbols (all of them in the initial alphabet), sentencepiece falls back to
byte pieces. Every candidate ends as a HF ``tokenizers.Tokenizer`` with the same special
tokens, so comparison, saving and packing treat them alike.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from pathlib import Path

import xxhash
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from tasks.data.document import iter_split
from tasks.tokenizer.config import CandidateKind, TokenizerTrainingConfig

# SentencePiece's own metaspace symbol: it stands for a space inside its pieces.
METASPACE = "\u2581"


def candidate_name(kind: CandidateKind, vocab_size: int) -> str:
    return f"{kind}-{vocab_size}"


def split_bytes(data_dir: Path, split: str) -> int:
    """UTF-8 bytes of all document texts of a split (one streaming pass)."""
    return sum(len(doc.text.encode("utf-8")) for doc in iter_split(data_dir, split))


def _in_sample(doc_id: str, rate: float) -> bool:
    return xxhash.xxh64_intdigest(doc_id.encode("utf-8")) < rate * 2**64


def sample_rate(data_dir: Path, max_bytes: int) -> float:
    """Share of train documents to sample so that the sample holds about ``max_bytes`` bytes."""
    total = split_bytes(data_dir, "train")
    if total == 0:
        raise ValueError(f"the train split under {data_dir} has no text: run `ladder data` on a non-empty corpus")
    return min(1.0, max_bytes / total)


def training_texts(data_dir: Path, rate: float) -> Iterator[str]:
    """The train texts of a deterministic sample of documents, streamed in stored order.

    Documents are kept by a hash of their id rather than taken from the front of the split,
    so every source keeps its share of the sample and the same data gives the same sample.
    """
    for doc in iter_split(data_dir, "train"):
        if rate >= 1.0 or _in_sample(doc.id, rate):
            yield doc.text


def _byte_level(tokenizer: Tokenizer) -> Tokenizer:
    # add_prefix_space=False keeps decode(encode(x)) == x: nothing is inserted before the text.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _train_bpe(texts: Iterable[str], vocab_size: int, cfg: TokenizerTrainingConfig) -> Tokenizer:
    tokenizer = _byte_level(Tokenizer(models.BPE()))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=cfg.special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def _train_unigram(texts: Iterable[str], vocab_size: int, cfg: TokenizerTrainingConfig) -> Tokenizer:
    # With all 256 byte symbols in the alphabet every pre-token has a segmentation, so the
    # model needs no unknown token.
    tokenizer = _byte_level(Tokenizer(models.Unigram()))
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=cfg.special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def _train_sentencepiece(texts: Iterable[str], vocab_size: int, cfg: TokenizerTrainingConfig) -> Tokenizer:
    import sentencepiece as spm
    from transformers.convert_slow_tokenizer import import_protobuf

    # SentencePiece holds its whole training sample in memory; max_train_bytes bounds it.
    # Identity normalisation and no dummy prefix keep the text as it is, so decoding restores it.
    # The special tokens are added on the HF side, not as SentencePiece user symbols, which would
    # turn their literal text inside a document into the boundary or a role.
    proto = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_writer=proto,
            vocab_size=vocab_size - len(cfg.special_tokens),
            model_type="unigram",
            byte_fallback=True,
            normalization_rule_name="identity",
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            unk_id=0,
            bos_id=-1,
            eos_id=-1,
            pad_id=-1,
            hard_vocab_limit=False,
            max_sentence_length=1 << 24,
            num_threads=1,
            minloglevel=2,
        )
    except RuntimeError as err:
        # e.g. every character SentencePiece must cover needs a piece, which a small vocabulary cannot hold.
        raise ValueError(
            f"sentencepiece could not train a {vocab_size}-token vocabulary on this data ({err}): "
            "raise tokenizer.vocab_sizes or remove sentencepiece from tokenizer.candidates"
        ) from err
    model = import_protobuf().ModelProto()
    model.ParseFromString(proto.getvalue())
    vocab = [(piece.piece, piece.score) for piece in model.pieces]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=True))
    tokenizer.normalizer = normalizers.Replace(" ", METASPACE)
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="never", split=True)
    tokenizer.decoder = decoders.Sequence([decoders.Replace(METASPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    tokenizer.add_special_tokens([AddedToken(tok, special=True, normalized=False) for tok in cfg.special_tokens])
    return tokenizer


_TRAINERS = {"bpe": _train_bpe, "unigram": _train_unigram, "sentencepiece": _train_sentencepiece}


def train_candidate(
    kind: CandidateKind, vocab_size: int, texts: Iterable[str], cfg: TokenizerTrainingConfig
) -> Tokenizer:
    """Train one candidate on ``texts`` (consumed once, streamed by the HF trainers)."""
    if kind not in _TRAINERS:
        raise ValueError(f"unknown candidate kind {kind!r}: use one of {sorted(_TRAINERS)}")
    return _TRAINERS[kind](texts, vocab_size, cfg)


def load_encoder(path: Path) -> Tokenizer:
    """A saved ``tokenizer.json`` as used on documents: special-token text inside one stays plain text.

    Without this a document that quotes ``<|endoftext|>`` would get a boundary mid-document.
    The flag is not saved, so the HF tokenizer still treats chat role tokens as special.
    """
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.encode_special_tokens = True
    return tokenizer
