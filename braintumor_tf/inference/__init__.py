"""Predictions for files a user points at: one record per file, written as JSON/CSV by ``predict``."""
