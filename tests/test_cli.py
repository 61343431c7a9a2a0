import subprocess
import sys


def test_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "ldvce.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for cmd in ("toy", "data", "train", "generate", "evaluate", "explain", "crp", "study", "demo",
                "bench"):
        assert cmd in out


def test_subcommand_help_shows_defaults():
    out = subprocess.run([sys.executable, "-m", "ldvce.cli", "generate", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "--method" in out and "default: guided" in out and "--batch-size" in out
