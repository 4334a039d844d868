"""hpc: collective algorithms from scratch, gradient-sync baselines and scaling sweeps on MPI."""

__version__ = "0.1.0"
