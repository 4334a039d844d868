"""sbatch templates (strong.sbatch, weak.sbatch), installed as the package data `hpc.launch.templates`.

The cluster-up/down scripts beside them start the local multi-node test cluster (tests and CI).
"""
