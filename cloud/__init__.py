"""Orrery's cloud side: the companion package ``cloud.orrery``."""
