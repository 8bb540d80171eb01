"""Where jobs run beyond this machine's own processes: cluster schedulers (slurm, sge) and the command
runner they share, which the SSH target reuses to reach a login node."""
