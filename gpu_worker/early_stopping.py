"""Early stopping for "auto" epochs: one run's per-epoch losses, its verdicts, and the weights it keeps.

`gpu_worker.train` evaluates, before training and after every epoch, the loss on held-out examples (the
validation file's, else `hp.holdout_examples` training examples held out by the job's seed) and on as many
trained-on ones, and `EarlyStopping` asks `core.hyperparameters.early_stopping_decision` whether to go on. It
keeps a copy of the trainable weights of the best epoch so far, the one a stop hands back, and writes all of it
into every checkpoint, so that a paused and resumed run stops where, and keeps what, an uninterrupted one would.
Without held-out data it stops once the training loss has converged and keeps the last epoch.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from core.hyperparameters import early_stopping_decision

# Trained-on examples evaluated beside the held-out ones: as many as are held out, and at least this many.
MIN_SEEN_EXAMPLES = 16
# Early stopping's state in every checkpoint dir: the per-epoch losses, and the best epoch's trainable weights.
STATE_FILE = "early_stopping.json"
KEPT_FILE = "early_stopping_kept.safetensors"


def rows_not_in(eval_ds: Any, train_ds: Any) -> list[int]:
    """Indices of the `eval_ds` rows that are not also rows of `train_ds`: only those measure generalising."""
    trained = {json.dumps(row, sort_keys=True, default=str) for row in train_ds}
    return [i for i, row in enumerate(eval_ds) if json.dumps(row, sort_keys=True, default=str) not in trained]


def seen_sample(train_ds: Any, n_held: int, seed: int) -> Any:
    """The trained-on examples whose loss is compared with the held-out loss, picked by the job's seed."""
    n_seen = min(len(train_ds), max(n_held, MIN_SEEN_EXAMPLES))
    return train_ds.select(sorted(random.Random(f"seen-{seed}").sample(range(len(train_ds)), n_seen)))


class EarlyStopping:
    """One run's early stopping. `held_out`: whether there are held-out examples to judge epochs by.

    `epochs[i]` (i = 0: before training): {"epoch", "step", "train_loss", "valid_loss", "seen_loss"}."""

    def __init__(self, *, held_out: bool) -> None:
        self.held_out = held_out
        self.epochs: list[dict[str, Any]] = []
        self.epoch_loss = [0.0, 0]  # this epoch's logged training loss x steps, and its steps
        self.last_logged_step = 0
        self.kept: tuple[int, dict[str, torch.Tensor]] | None = None  # the best epoch so far, its weights
        self.keep_epoch: int | None = None
        self.stop_reason: str | None = None

    def baseline(self, losses: Callable[[], tuple[float, float]]) -> None:
        """ "Epoch 0": the base model's held-out and trained-on losses, what the first epoch's gains are measured
        from. `losses` is only called with held-out data, and only once per run (not again on resume)."""
        if self.epochs:
            return
        valid, seen = losses() if self.held_out else (None, None)
        self.epochs.append(
            {"epoch": 0, "step": 0, "train_loss": None, "valid_loss": valid, "seen_loss": seen}
        )

    def log_train_loss(self, step: int, loss: float) -> None:
        """A logged training loss at `step`, the mean over the steps since the last log."""
        steps = step - self.last_logged_step
        self.last_logged_step = step
        self.epoch_loss[0] += loss * steps
        self.epoch_loss[1] += steps

    def end_epoch(self, epoch: int, step: int) -> None:
        total, steps = self.epoch_loss
        self.epochs.append(
            {
                "epoch": epoch,
                "step": step,
                "train_loss": total / steps if steps else None,
                "valid_loss": None,
                "seen_loss": None,
            }
        )
        self.epoch_loss = [0.0, 0]

    def awaits_losses(self, step: int) -> bool:
        """Whether the epoch that ended at `step` still waits for its held-out and trained-on losses."""
        return self.held_out and bool(self.epochs) and self.epochs[-1]["step"] == step

    def set_losses(self, valid: float, seen: float) -> None:
        self.epochs[-1]["valid_loss"] = valid
        self.epochs[-1]["seen_loss"] = seen

    def decide(self, model: Any) -> bool:
        """After an epoch's numbers are in: whether to stop. Keeps a copy of `model`'s trainable weights when
        this epoch is the best so far, the one a later stop may hand back."""
        decision = early_stopping_decision(
            [e["valid_loss"] for e in self.epochs],
            [e["seen_loss"] for e in self.epochs],
            [e["train_loss"] for e in self.epochs],
        )
        epoch = self.epochs[-1]["epoch"]
        self.keep_epoch = decision.keep_epoch
        if decision.stop:
            self.stop_reason = decision.reason
            return True
        if self.held_out and decision.keep_epoch == epoch:
            weights = {
                n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad
            }
            self.kept = (epoch, weights)
        return False

    def finish(self, model: Any, max_epochs: int) -> tuple[str, dict[str, Any]]:
        """At the end of a finished run: put the kept epoch's weights back into `model`. Returns the event's
        message and its data (per-epoch losses, the epoch it stopped after and the epoch kept)."""
        last = self.epochs[-1]["epoch"] if self.epochs else 0
        keep = self.keep_epoch if self.held_out else None
        if keep is not None and keep != last:
            assert self.kept is not None and self.kept[0] == keep, (keep, self.kept and self.kept[0])
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if name in self.kept[1]:
                        param.copy_(self.kept[1][name].to(param.device, param.dtype))
        if self.stop_reason is not None:
            message = f"Early stopping: stopped after epoch {last} of {max_epochs} ({self.stop_reason})"
        else:
            message = f"Early stopping: trained all {max_epochs} epochs without stopping"
        if keep is not None:
            message += f"; the adapter is epoch {keep}'s" + (" (the last)" if keep == last else "")
        summary = {
            "stopped_at_epoch": last,
            "max_epochs": max_epochs,
            "kept_epoch": keep if keep is not None else last,
            "reason": self.stop_reason or "reached the epoch ceiling",
            "epochs": self.epochs,
        }
        return message, summary

    def save(self, ckpt: Path) -> None:
        state = {
            "epochs": self.epochs,
            "epoch_loss": self.epoch_loss,
            "keep_epoch": self.keep_epoch,
            "stop_reason": self.stop_reason,
            "kept_epoch": self.kept[0] if self.kept else None,
        }
        (ckpt / STATE_FILE).write_text(json.dumps(state))
        if self.kept is not None:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in self.kept[1].items()}, str(ckpt / KEPT_FILE))

    def load(self, ckpt: Path) -> None:
        """Go on where the checkpoint's run left off (a checkpoint without the state: from scratch)."""
        if not (ckpt / STATE_FILE).is_file():
            return
        state = json.loads((ckpt / STATE_FILE).read_text())
        self.epochs = state["epochs"]
        self.epoch_loss = state["epoch_loss"]
        self.keep_epoch = state["keep_epoch"]
        self.stop_reason = state["stop_reason"]
        if state["kept_epoch"] is not None:
            from safetensors.torch import load_file

            self.kept = (state["kept_epoch"], load_file(str(ckpt / KEPT_FILE)))
