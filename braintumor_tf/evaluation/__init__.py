"""Scoring a model (any saved form, through ``export.runtimes``) against the truth of a task."""
