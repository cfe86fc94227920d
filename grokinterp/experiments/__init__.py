"""Experiments: orchestrate training + analysis (tickets retraining, GrokTransfer, sweeps)."""
