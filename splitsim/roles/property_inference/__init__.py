"""A participant of federated training that infers a target's data property (papers/002).

``role.py`` the phases; ``protocol.py`` the participants' ClientApp (FedAvg itself is
engine/federated.py); ``attack.py`` the inference; ``report.py`` report.md and pictures."""
