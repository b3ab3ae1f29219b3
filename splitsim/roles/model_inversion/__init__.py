"""Split learning with a curious server that inverts what it receives (papers/003).

``role.py`` the phases; ``protocol.py`` split training over Flower; ``attack.py`` the decoder;
``report.py`` report.md and pictures."""
