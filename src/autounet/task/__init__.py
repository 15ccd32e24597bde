"""The raw task, the first stage: dataset.json layouts, the integrity check, the fingerprint, and the
synthetic demo task."""
