"""The bottom layer, which knows no stage: workspace, task names, the run-folder layout and checkpoints,
parallel execution and system probing. Every stage may import it; it imports none."""
