"""Experiment planning: target spacing, configurations, network topology, memory, batch size."""
