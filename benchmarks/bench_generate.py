"""Seed-faithful vs best counterfactual generation, side by side (same as `ldvce bench generate`)."""
import sys

from ldvce.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "generate", *sys.argv[1:]]))
