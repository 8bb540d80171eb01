"""SLURM as a launcher: a job's process is a batch job (or one task of an array) on the cluster,
under the same job contract, guards and markers as a local process."""
