"""Launchers: start a command on N ranks on this machine (`mpirun`, each program under `reaper`) or on a
cluster (`sbatch` renders scripts from the templates shipped in `hpc.launch.templates`, `slurm` submits
them and waits)."""
