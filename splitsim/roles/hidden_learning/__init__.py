"""A model supplier that reads secrets out of an app's scores: hidden learning (papers/001).

``role.py`` the phases; ``protocol.py`` deployment and score collection over Flower;
``attack.py`` the supplier's joint training; ``report.py`` report.md and pictures."""
