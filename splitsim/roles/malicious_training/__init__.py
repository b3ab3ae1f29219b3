"""Malicious training code (papers/002, section 3; Song, Ristenpart, Shmatikov, CCS 2017): the
data owners train on their private images with a supplier's code, which makes the model remember
them (correlated parameters, parameter signs, or memorised pseudo-random inputs whose labels
spell the images out); the supplier reads the images back from the published weights or from
the served model's answers."""
