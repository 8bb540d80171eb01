"""Grid Engine (SGE/UGE) targets: parsing what qsub, qstat and qacct say (the launcher is not built yet)."""
