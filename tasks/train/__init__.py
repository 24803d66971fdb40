"""The training stage: DeepSpeed loop, exact resume, atomic checkpoints, loss-spike rollback."""
