"""Threat model: a curious data owner of split learning infers the labels the server holds from
the gradients the server returns to it (Li et al., *Label Leakage and Protection in Two-party
Split Learning*, ICLR 2022: the norm and direction attacks; Gaussian and Marvell noise on the
server's side of the gradient)."""
