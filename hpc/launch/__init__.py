"""Launchers: start a command on N ranks on this machine (`mpirun`) or on a cluster (`slurm`: sbatch
scripts rendered from the templates shipped in `hpc.launch.templates`, submitted, waited for)."""
