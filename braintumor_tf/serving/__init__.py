"""Serving helpers that are not TF Serving itself (see local.py)."""
