"""A tiny causal LM trained briefly on a curated train split: a base model better than random."""

from __future__ import annotations

from pathlib import Path

from models.llama import ModelConfig, build_model
from tasks.data.document import iter_split


def save_tiny_lm(config: ModelConfig, tokenizer_dir: Path, data_dir: Path, out: Path, steps: int) -> Path:
    """``config``'s model trained ``steps`` steps of next-token prediction (seeded), saved with its tokenizer."""
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = build_model(config, seed=0, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    if steps:
        text = "".join(doc.text + tokenizer.eos_token for doc in iter_split(data_dir, "train"))
        ids = torch.tensor(tokenizer(text)["input_ids"])
        generator = torch.Generator().manual_seed(0)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(steps):
            starts = torch.randint(0, len(ids) - 65, (16,), generator=generator)
            batch = torch.stack([ids[s : s + 64] for s in starts])
            model(input_ids=batch, labels=batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
