"""Single exposure (the paper's memory experiment): one pass per epoch, batch 1, in the seeded order.

Each image's loss is recorded at its exposure: the loss of the forward pass its own update is computed
from. On CUDA the whole batch-1 step (forward, loss, backward, Adam) can be captured in a CUDA graph and
replayed per image (:meth:`ExposureLoop.capture`); capture failures fall back to eager steps.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from .images import iter_batches
from .loop import TrainLoop, set_train_modes

__all__ = ["ExposureLoop"]

log = logging.getLogger(__name__)


class ExposureLoop(TrainLoop):
    """The exposure loop of :func:`~memlens.train.fit_autoencoder` (``mode="exposure"``)."""

    def exposure(self, want_fast: bool, fast: bool | str) -> bool:
        """Run the remaining exposure steps; True when the CUDA-graph path was used."""
        st = self.state
        n = self.src.n
        set_train_modes(self.model, self.bn, self.freeze_encoder)
        for m in self.optimizer.param_groups:
            m["lr"] = self.lr
        graph = None
        if want_fast and st.step < self.total:
            first = st.orders[st.step // n][st.step % n]
            t0 = time.perf_counter()
            graph = self.capture(self.to_device(self.src.get(int(first))[None]), strict=fast is True)
            self.setup_seconds = time.perf_counter() - t0
        dev_losses = torch.zeros(self.total, device=self.dev, dtype=torch.float32)
        start = st.step
        flushed = start

        def flush(upto: int) -> None:
            nonlocal flushed
            if upto > flushed:
                vals = dev_losses[flushed:upto].cpu().numpy()
                for s, v in zip(range(flushed, upto), vals, strict=True):
                    p, k = divmod(s, n)
                    st.losses[p, st.orders[p][k]] = float(v)
                    st.curve.append({"phase": "exposure", "epoch": p + 1, "step": s + 1, "loss": float(v),
                                     "val_loss": None, "lr": self.lr})
                flushed = upto

        while st.step < self.total and not self.stop_now():
            p, k = divmod(st.step, n)
            chunk_end = min((p + 1) * n, self.total)
            if self.max_steps is not None:
                chunk_end = min(chunk_end, self.max_steps)
            idx = st.orders[p][k:chunk_end - p * n]
            for j, x in enumerate(iter_batches(self.src, [[int(i)] for i in idx], self.num_workers)):
                xd = self.to_device(x)
                if graph is not None:
                    static_x, static_rec, g = graph
                    static_x.copy_(xd)
                    g.replay()
                    dev_losses[st.step].copy_(static_rec)
                else:
                    self.optimizer.zero_grad(set_to_none=True)
                    loss, _, dist = self.forward_loss(xd)
                    loss.backward()
                    self.optimizer.step()
                    # recorded: the image's distance (the objective itself unless the loss is '1-<metric>')
                    dev_losses[st.step] = dist.detach().float().mean()
                st.step += 1
                due_ck = self.ck_path is not None and st.step % self.ck_every == 0
                if due_ck or self.dev.type == "cpu" or st.step == chunk_end:
                    flush(st.step)
                info = {"phase": "exposure", "epoch": p + 1, "image": int(idx[j])}
                if flushed == st.step:
                    info["loss"] = st.curve[-1]["loss"]
                self.after_step(info)
        flush(st.step)
        st.rng = None
        self.save()
        return graph is not None

    def capture(self, example: torch.Tensor, strict: bool) -> tuple[torch.Tensor, torch.Tensor, Any] | None:
        """Capture forward + loss + backward + Adam step for one image in a CUDA graph (None on failure)."""
        model, opt = self.model, self.optimizer
        snap_model = {k: v.detach().clone() for k, v in model.state_dict().items()}
        snap_opt = {id(p): {k: (t.clone() if torch.is_tensor(t) else t) for k, t in s.items()}
                    for p, s in opt.state.items()}

        def restore() -> None:
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    v.copy_(snap_model[k])
                for p, s in opt.state.items():
                    old = snap_opt.get(id(p))
                    for k, t in s.items():
                        if torch.is_tensor(t):
                            if old is None:
                                t.zero_()
                            else:
                                t.copy_(old[k])
        try:
            static_x = example.clone()
            side = torch.cuda.Stream(self.dev)
            side.wait_stream(torch.cuda.current_stream(self.dev))
            with torch.cuda.stream(side):
                for _ in range(3):
                    opt.zero_grad(set_to_none=True)
                    loss, _, _ = self.forward_loss(static_x)
                    loss.backward()
                    opt.step()
            torch.cuda.current_stream(self.dev).wait_stream(side)
            restore()
            g = torch.cuda.CUDAGraph()
            opt.zero_grad(set_to_none=True)
            with torch.cuda.graph(g):
                static_loss, _, static_dist = self.forward_loss(static_x)
                static_loss.backward()
                opt.step()
                static_rec = static_dist.detach().float().mean()  # the recorded distance
            torch.cuda.synchronize(self.dev)
            return static_x, static_rec, g
        except Exception as exc:  # capture is an optimisation: fall back to eager
            restore()
            opt.zero_grad(set_to_none=True)
            if strict:
                raise RuntimeError(f"CUDA-graph capture of the exposure step failed: {exc}") from exc
            log.warning("CUDA-graph capture failed (%s: %s); using eager batch-1 steps", type(exc).__name__, exc)
            return None
