"""The spike suite (``tasks.spikes.suite``): ladder's guard against the published spike rules.

Run: ``.venv/bin/python bench/spikes.py [--steps 200] [--onset 120]`` (a few minutes on 2 cores);
it prints the summary per policy, the verdict, and every scenario's cells.
"""

from __future__ import annotations

import argparse
import logging

from tasks.spikes.suite import POLICIES, markdown, run_suite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200, help="Optimizer steps per run.")
    parser.add_argument("--onset", type=int, default=120, help="First step of each fault (after every rule's warm-up).")
    parser.add_argument("--policies", nargs="*", default=None, choices=list(POLICIES))
    parser.add_argument("--scenarios", nargs="*", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    import torch

    torch.set_num_threads(1)
    rows = run_suite(args.steps, args.onset, args.policies, args.scenarios)
    print(markdown(rows, args.steps))


if __name__ == "__main__":
    main()
