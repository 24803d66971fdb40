"""The spike suite: loss-spike detectors compared on the same seeded spikes (a benchmark, not a pipeline stage)."""
