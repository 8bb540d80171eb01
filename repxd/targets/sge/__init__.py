"""Grid Engine (SGE/UGE) targets: the cluster launcher with qsub, qstat, qacct and qdel."""
