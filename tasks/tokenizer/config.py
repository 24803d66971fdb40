"""The tokenizer stage's config section. Defaults are the ``tiny`` profile: seconds on 2 CPU cores.

Two artifacts come out of the stage and each is versioned by only what determines it: the
chosen tokenizer by ``TokenizerConfig.training()`` (candidates, special tokens, the selection
rule) and the packed shards by ``TokenizerConfig.packing`` plus the tokenizer's version, so
changing the sequence length repacks without retraining the candidates.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ladder.config import Section

CandidateKind = Literal["bpe", "unigram", "sentencepiece"]
Objective = Literal["bytes_per_token", "fertility", "rare_token_mass", "vocab_utilisation", "encode_mb_per_s"]

# Byte-level candidates hold the 256 byte symbols before any learned token.
BYTE_ALPHABET = 256


class PackingConfig(Section):
    """How the curated splits become fixed-length token sequences."""

    seq_len: int = Field(256, ge=2, description="Tokens per packed sequence (the training context length).")
    num_workers: int = Field(
        2,
        ge=1,
        description="Worker processes that tokenize in parallel, the cores shared among their tokenizers thread "
        "pools; 1 tokenizes in this process. The shards are identical either way.",
    )
    chunk_docs: int = Field(
        64,
        ge=1,
        description="Documents per unit of work, encoded in one batch call (in a worker, or in this process): "
        "large enough to amortise the transfer and keep the thread pool busy.",
    )


class TokenizerTrainingConfig(Section):
    """Candidates to train, the tokens every candidate reserves, and the rule that picks one."""

    candidates: list[CandidateKind] = Field(
        ["bpe", "unigram"],
        min_length=1,
        description="Kinds to train: bpe (byte-level BPE), unigram (Unigram over byte-level symbols), "
        "both from HF tokenizers; sentencepiece (SentencePiece Unigram with byte fallback, converted to HF).",
    )
    vocab_sizes: list[int] = Field(
        [512, 1024], min_length=1, description="Vocabulary sizes, special tokens included; every kind is trained at each."
    )
    max_train_bytes: int = Field(
        1_000_000,
        ge=1,
        description="Training text budget: a deterministic sample of train documents (by id hash, so every "
        "source keeps its share) of about this many UTF-8 bytes trains the candidates and counts rare tokens.",
    )
    min_frequency: int = Field(2, ge=1, description="bpe: a pair seen fewer times than this is never merged.")
    boundary_token: str = Field(
        "<|endoftext|>", description="Ends every packed document; also the bos, eos and unk token of the saved tokenizer."
    )
    pad_token: str = Field("<|pad|>", description="Fills the tail of the last packed sequence only.")
    role_tokens: dict[str, str] = Field(
        {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"},
        description="Chat role -> special token that opens that role's turn in the chat template.",
    )
    rare_k: int = Field(
        10, ge=1, description="A token seen fewer than this many times in the training sample counts as rare."
    )
    objective: Objective = Field(
        "bytes_per_token",
        description="Metric the rule optimises among admissible candidates: bytes_per_token, vocab_utilisation "
        "and encode_mb_per_s are maximised, fertility and rare_token_mass minimised.",
    )
    require_round_trip: bool = Field(
        True, description="Admit only candidates with decode(encode(x)) == x on every validation document."
    )
    max_rare_token_mass: float = Field(
        0.05, ge=0, le=1, description="Admit only candidates whose rare-token share of training-token mass is at most this."
    )

    @property
    def special_tokens(self) -> list[str]:
        """Boundary, pad, then the role tokens sorted by role: the order fixes their ids in every candidate.

        Sorting makes the ids independent of the order the roles were written in, as the config hash is.
        """
        return [self.boundary_token, self.pad_token, *(self.role_tokens[role] for role in sorted(self.role_tokens))]

    @model_validator(mode="after")
    def _consistent(self) -> "TokenizerTrainingConfig":
        specials = self.special_tokens
        if len(set(specials)) != len(specials) or not all(specials):
            raise ValueError(f"special tokens must be distinct and non-empty, got {specials}")
        if "assistant" not in self.role_tokens:
            raise ValueError(
                f"role_tokens {self.role_tokens} needs an 'assistant' role: the chat template's generation prompt opens it"
            )
        if len(set(self.candidates)) != len(self.candidates) or len(set(self.vocab_sizes)) != len(self.vocab_sizes):
            raise ValueError("candidates and vocab_sizes must not repeat an entry")
        floor = BYTE_ALPHABET + len(specials)
        too_small = [v for v in self.vocab_sizes if v <= floor]
        if too_small:
            raise ValueError(
                f"vocab_sizes {too_small} leave no room for learned tokens: each must exceed "
                f"{BYTE_ALPHABET} byte symbols + {len(specials)} special tokens = {floor}"
            )
        return self


class TokenizerConfig(TokenizerTrainingConfig):
    """The tokenizer stage: train and compare candidates, select one by rule, pack token shards."""

    packing: PackingConfig = Field(default_factory=PackingConfig, description="Packing of the splits into shards.")

    def training(self) -> TokenizerTrainingConfig:
        """The part that versions the chosen tokenizer (everything but packing)."""
        return TokenizerTrainingConfig.model_validate(self.model_dump(exclude={"packing"}))
