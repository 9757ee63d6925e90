"""How close a pruning run's realized MAC reduction must land to its target (torch-free, for the DAG's
report steps too): within this many percentage points, measured as the tables measure it (mean
per-instance backbone MACs over the evaluation set, gates on their own line)."""
MAC_TOLERANCE_PT = 1.0
