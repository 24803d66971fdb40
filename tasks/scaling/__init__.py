"""The scaling-law stage: fit L(N, D) to the ladder's rungs, predict the target run, gate it."""
