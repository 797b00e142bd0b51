"""Data layer: dataset discovery, label conventions, checks, readers and synthetic data."""
