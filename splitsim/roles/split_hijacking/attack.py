"""The hijacking server: the Feature-Space Hijacking Attack (FSHA) on split learning.

Pasquini, Ateniese, Bernaschi, *Unleashing the Tiger: Inference Attacks on Split Learning*,
CCS 2021, section 3.1. The server trains, on its own public images ``X_pub``, a pilot network
``f~`` (the same shape as the owners' segment ``f``), its inverse ``f~^-1`` and a critic ``D``
on the feature space. Instead of the task gradient it returns to the owners the gradient of
its own objective, so that ``f`` learns to map into the pilot's feature space:

    L_f~,f~^-1 = d( f~^-1(f~(x_pub)), x_pub )                       (eq. 2: pilot autoencoder)
    L_f        = D(f(x_priv))                                       (eq. 3, Wasserstein form;
                                                                     its gradient goes back)
    L_D        = D(f~(x_pub)) - D(f(x_priv)) + lambda * GP          (eq. 4, WGAN-GP critic)

Then ``f~^-1(f(x_priv))`` reconstructs the owners' private images (eq. 5). Each of the server's
steps trains the three on one batch of ``X_pub`` against the owner batch that arrived; ``d`` is
the mean squared error. The attack needs a spatial cut (``models.split.cut: conv``, a feature
map, as the paper's convolutional client networks send): against papers/003's linear cut, whose
f1 ends in a dense layer, matching the critic's distribution does not tie ``f`` to the pilot
image by image, and the reconstructions stay near chance (docs/split_hijacking.md). The
server keeps training its honest segment f2 on the batch's labels too, as a shadow classifier
(the owners see a server whose task accuracy grows).

The *adaptive* server knows the owners run SplitGuard (defences/splitguard.py) and evades it
the way Fu et al. evade it (*Focusing on Pinocchio's Nose: A Gradients Scrutinizer to Thwart
Split-Learning Hijacking Attacks Using Intrinsic Attributes*, NDSS 2023, "SplitSpy"): fake
batches carry wrong labels, so its shadow classifier gets them wrong. It answers honestly for
its first ``warmup`` batches, so that the shadow classifier learns, and afterwards answers with
the task gradient every batch on which the shadow classifier's accuracy is under ``screen``,
and with FSHA's gradient every other batch. SplitGuard then sees fakes whose gradients differ
from the regular ones, as under an honest server.

    >>> server = Hijacker(scenario, torch.device("cpu"))
    >>> g = server.answer(z, y, out, task_grad, pid, rnd, step, ids)   # what goes back
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from splitsim import seeds
from splitsim.data.mnist import aux_images
from splitsim.models.split_cnn import SplitCNN, decoder_for, feature_map
from splitsim.registry import MODELS
from splitsim.scenario import Scenario


def critic(params: SplitCNN.Params, hidden: int) -> nn.Module:
    """D on what f1 sends: convolutions on the feature map of a conv cut (as the paper's
    critic), an MLP on the vector of papers/003's linear cut; one score per example."""
    if params.cut == "linear":
        return nn.Sequential(
            nn.Linear(params.intermediate, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, 1),
        )  # fmt: skip
    channels, side, _ = feature_map(params)
    quarter = (((side + 1) // 2) + 1) // 2  # after two stride-2 convolutions
    return nn.Sequential(
        nn.Unflatten(1, (channels, side, side)),
        nn.Conv2d(channels, hidden // 4, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
        nn.Conv2d(hidden // 4, hidden // 2, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
        nn.Flatten(), nn.Linear(hidden // 2 * quarter * quarter, 1),
    )  # fmt: skip


class Hijacker:
    """The server's side of FSHA (or of the honest server, ``server: honest``): answers every
    owner batch and records the tensor of each owner's every ``record_every``-th batch."""

    def __init__(self, scenario: Scenario, device: torch.device) -> None:
        p = scenario.role.params
        self.p, self.device, self.hijack = p, device, p.server == "fsha"
        spec = scenario.models.split  # the pilot has the owners' segment's shape
        split = spec.params
        torch.manual_seed(seeds.int_seed(scenario.seed, "hijack.init"))
        self.pilot = MODELS.get(spec.name).build(split, (1, 28, 28), 10).client.to(device)
        self.decoder = decoder_for(split, p.decoder == "deep").to(device)
        self.critic = critic(split, p.critic_hidden).to(device)
        self.opt_pilot = torch.optim.Adam(
            [*self.pilot.parameters(), *self.decoder.parameters()], lr=p.lr_pilot, foreach=True
        )  # foreach: bit for bit the default loop's arithmetic, in fewer calls (decoding.py)
        self.opt_critic = torch.optim.Adam(self.critic.parameters(), lr=p.lr_critic, foreach=True)
        d = scenario.dataset.params
        self.public = torch.from_numpy(
            aux_images("same", d.root, p.aux_size, 0, None, scenario.seed, d.download).x
        )
        self.rng = seeds.rng(scenario.seed, "hijack.public_batches")
        # the critic's interpolation draws: a generator of its own, whatever else runs
        self.mixing = torch.Generator(device=device).manual_seed(
            seeds.int_seed(scenario.seed, "hijack.init", 1)
        )
        self.batch = scenario.training.batch_size
        self.batches = 0  # owner batches answered
        self.honest_answers = 0  # of them, answered with the task gradient
        self.recorded: dict[str, list[np.ndarray]] = {"z": [], "ids": [], "owner": [], "step": []}
        self.losses: list[dict[str, float]] = []

    def answer(
        self, z: torch.Tensor, y: torch.Tensor, out: torch.Tensor, grad: np.ndarray,
        pid: int, rnd: int, step: int, ids: np.ndarray,
    ) -> np.ndarray:  # fmt: skip
        self.batches += 1
        if step % self.p.record_every == 0:  # each owner's every n-th batch of a round
            for key, value in (("z", z.cpu().numpy()), ("ids", ids),
                               ("owner", np.full(len(ids), pid)),
                               ("step", np.full(len(ids), self.batches))):  # fmt: skip
                self.recorded[key].append(np.asarray(value))
        if not self.hijack:
            return grad
        g = self._train(z, step)
        if self.p.adaptive and self._screened(out, y):
            self.honest_answers += 1
            return grad
        return g

    def _screened(self, out: torch.Tensor, y: torch.Tensor) -> bool:
        """SplitSpy's rule: during warm-up, and for batches the shadow classifier gets wrong
        (likely fakes), answer with the task gradient."""
        if self.batches <= self.p.warmup:
            return True
        accuracy = float((out.argmax(1) == y).float().mean())
        return accuracy < self.p.screen

    def _train(self, z: torch.Tensor, step: int) -> np.ndarray:
        """One FSHA step against the owner batch ``z``: the gradient of L_f, then the pilot,
        its inverse and the critic on one public batch."""
        zs = z.detach().clone().requires_grad_(True)
        g = torch.autograd.grad(self.critic(zs).mean(), zs)[0]
        idx = torch.from_numpy(self.rng.integers(0, len(self.public), self.batch))
        x_pub = self.public[idx].to(self.device)
        z_pub = self.pilot(x_pub)
        rec = ((self.decoder(z_pub) - x_pub) ** 2).mean()
        self.opt_pilot.zero_grad()
        rec.backward()
        self.opt_pilot.step()
        z_pub, z_priv = z_pub.detach(), z.detach()
        n = min(len(z_pub), len(z_priv))
        mix = torch.rand(n, 1, device=self.device, generator=self.mixing)
        between = (mix * z_pub[:n] + (1 - mix) * z_priv[:n]).requires_grad_(True)
        slope = torch.autograd.grad(self.critic(between).sum(), between, create_graph=True)[0]
        penalty = ((slope.norm(dim=1) - 1) ** 2).mean()
        critic_loss = (
            self.critic(z_pub).mean() - self.critic(z_priv).mean()
            + self.p.gradient_penalty * penalty
        )  # fmt: skip
        self.opt_critic.zero_grad()
        critic_loss.backward()
        self.opt_critic.step()
        if step % self.p.record_every == 0:
            self.losses.append({"batch": self.batches, "pilot_mse": float(rec.detach()),
                                "critic": float(critic_loss.detach())})  # fmt: skip
        return g.cpu().numpy().astype(np.float32)

    def held(self) -> dict[str, Any]:
        """What the server holds after training: its networks and the recorded tensors."""
        cat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in self.recorded.items()}

        def weights(module: nn.Module) -> dict[str, np.ndarray]:
            return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}

        return {
            "pilot": weights(self.pilot) if self.hijack else {},
            "decoder": weights(self.decoder) if self.hijack else {},
            "recorded": cat,
            "honest_answers": self.honest_answers,
            "batches": self.batches,
            "losses": self.losses,
        }
