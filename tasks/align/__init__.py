"""Alignment stage: instruction data, SFT and DPO on the model's own samples, alignment gains and tax."""
