"""Threat models: one file per role, each running its phases top to bottom."""
