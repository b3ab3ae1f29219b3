"""``python -m splitsim compare``: every defence against every attacker role, side by side."""
