"""Malicious roles, one file each; the role a scenario names is registered in splitsim.roles."""
