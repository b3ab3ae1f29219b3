"""Threat model: a malicious split-learning server hijacks the data owners' training so that
what they send becomes invertible (Pasquini, Ateniese, Bernaschi, *Unleashing the Tiger:
Inference Attacks on Split Learning*, CCS 2021: FSHA), and the owners' detector (Erdoğan,
Küpçü, Çiçek, *SplitGuard*, WPES 2022)."""
