"""A model owner that decodes secret inputs from label-change bits (papers/004).

``role.py`` the phases; ``protocol.py`` the label-change oracle over Flower; ``attack.py`` the
signature search and decoder; ``report.py`` report.md and pictures."""
