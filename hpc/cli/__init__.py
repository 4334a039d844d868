"""The command line: the only layer that knows argparse. `main` parses, then calls library functions
with explicit arguments (small option dataclasses built once here)."""
