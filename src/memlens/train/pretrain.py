"""Pretraining (``mode="pretrain"``, also the visual experience before exposure): multi-epoch mini-batches.

Each epoch presents the training images in a seeded order in mini-batches (:func:`epoch_batches`),
augmented per step from a seeded generator, with Adam on a cosine schedule to 0 and a validation loss on
the held-out images at the end of the epoch. Under ``torchrun`` every rank feeds its part of each global
batch (:mod:`memlens.train.distributed`).
"""

from __future__ import annotations

import logging
import math

import torch

from .augment import augment_batch
from .distributed import unwrap
from .images import iter_batches
from .loop import TrainLoop, set_train_modes
from .seeding import seeded_generator

__all__ = ["PretrainLoop", "epoch_batches"]

log = logging.getLogger(__name__)


def epoch_batches(n: int, batch_size: int, merge_single: bool) -> list[tuple[int, int]]:
    """(start, stop) of each mini-batch; a last batch of one image joins the previous one when BN trains
    (batch statistics of a single image are undefined at 1x1 resolution and meaningless otherwise)."""
    bounds = [(a, min(a + batch_size, n)) for a in range(0, n, batch_size)]
    if merge_single and len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def _cosine(base: float, t: int, total: int) -> float:
    return base * 0.5 * (1.0 + math.cos(math.pi * min(t, total) / max(total, 1)))


class PretrainLoop(TrainLoop):
    """The pretraining loop of :func:`~memlens.train.fit_autoencoder` (``mode="pretrain"``)."""

    def pretrain(self) -> None:
        """Run the remaining pretraining steps (validation and a curve row at the end of each epoch)."""
        st = self.state
        bs = int(self.settings["batch_size"])
        bpe = self.batches_per_epoch
        while st.step < self.total and not self.stop_now():
            e, b0 = divmod(st.step, bpe)
            order = st.orders[e]
            bounds = epoch_batches(len(order), bs, merge_single=self.bn == "train")
            batches = [order[a:b].tolist() for a, b in bounds[b0:]]
            if self.max_steps is not None:
                batches = batches[:max(0, self.max_steps - st.step)]
            # several processes: each feeds its contiguous part of every global batch
            parts = [self.ddp.part(len(bt)) for bt in batches] if self.ddp is not None else None
            feed = batches if parts is None else [bt[a:z] for bt, (a, z) in zip(batches, parts, strict=True)]
            set_train_modes(unwrap(self.model), self.bn, self.freeze_encoder)
            for j, x in enumerate(iter_batches(self.src, feed, self.num_workers)):
                b = st.step - e * bpe
                n_batch = len(batches[j])
                if self.augment:
                    gen = seeded_generator(self.seed, "augment", e, b)
                    x = augment_batch(x, gen) if parts is None else self.ddp.augment(x, gen, parts[j][0])
                lr = _cosine(self.lr, st.step, self.total)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                xd = self.to_device(x)
                self.optimizer.zero_grad(set_to_none=True)
                loss, per, dist = self.forward_loss(xd)
                if self.ddp is not None:  # DDP's gradient average then equals the global batch mean's gradient
                    loss = self.ddp.scaled_loss(per, n_batch)
                loss.backward()
                self.optimizer.step()
                # the curve records distances (the objective itself unless the loss is a complement)
                lv = float(dist.detach().mean()) if self.ddp is None else \
                    self.ddp.all_sum(dist.detach().sum()) / n_batch
                st.epoch_loss_sum += lv * n_batch
                st.epoch_loss_n += n_batch
                st.step += 1
                info = {"phase": "pretrain", "epoch": e + 1, "loss": lv, "batch": n_batch}
                if st.step % bpe == 0:
                    val = self.validate()
                    st.curve.append({"phase": "pretrain", "epoch": e + 1, "step": st.step,
                                     "loss": st.epoch_loss_sum / max(st.epoch_loss_n, 1), "val_loss": val,
                                     "lr": lr})
                    log.info("pretrain epoch %d/%d: loss %.5f%s", e + 1, self.total // bpe,
                             st.curve[-1]["loss"], f", val {val:.5f}" if val is not None else "")
                    st.epoch_loss_sum, st.epoch_loss_n = 0.0, 0
                    set_train_modes(unwrap(self.model), self.bn, self.freeze_encoder)
                    info["val_loss"] = val
                self.after_step(info)
        st.rng = None
        self.save()

    @torch.no_grad()
    def validate(self) -> float | None:
        """Mean per-image loss on the validation images (None without them), over all ranks."""
        if len(self.val_idx) == 0:
            return None
        model = unwrap(self.model)  # no DDP collectives: ranks may run different batch counts
        model.eval()
        bs = max(1, int(self.settings["batch_size"]))
        total, n = 0.0, 0
        idx = self.val_idx.tolist()
        if self.ddp is not None:  # each rank measures its part of the validation images
            a, z = self.ddp.part(len(idx))
            idx = idx[a:z]
        for i in range(0, len(idx), bs):
            x = self.to_device(self.src.batch(idx[i:i + bs]))
            _, _, dist = self.forward_loss(x, model)
            total += float(dist.sum())
            n += len(dist)
        if self.ddp is not None:
            total, n = self.ddp.all_sum(total), int(round(self.ddp.all_sum(n)))
        return total / n
