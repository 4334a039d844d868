"""Fixtures shared by all test modules."""

from tests.slurm_cluster import slurm_cluster  # noqa: F401  (session-wide local Slurm cluster)
