"""What a new user meets first: help that explains the command line, records that say where they ran."""

from __future__ import annotations

from tests.helpers import hpc


def test_sweep_help_explains_the_workload_part():
    proc = hpc("sweep", "strong", "--help")
    assert proc.returncode == 0
    text = proc.stdout
    assert "WORKLOAD" in text and "bench collective --algo" in text and "train --sync" in text
    assert "run [--metric REGEX]" in text and "never takes --np or --json" in text
