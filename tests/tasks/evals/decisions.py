"""Gate decisions that stand in for a judged candidate where a test exercises the registry, not the gate."""

from tasks.evals.gate import Check, Decision

PASSED = Decision(True, [Check("floor", "ppl/bits_per_byte", True, "2.0 must be <= 3")])
REJECTED = Decision(False, [Check("regression", "ppl/bits_per_byte", False, "worse by +0.5000")])
