"""Console commands: one thin module per command (argparse, then one library call)."""
