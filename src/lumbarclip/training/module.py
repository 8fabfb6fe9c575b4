"""The LightningModule: contrastive training of `LumbarCLIP`, validated by zero-shot accuracy."""

from __future__ import annotations

import math

import lightning as L
import torch
from sklearn.metrics import balanced_accuracy_score

from lumbarclip.inference import class_embeddings, zero_shot_probs
from lumbarclip.losses import ClipLoss
from lumbarclip.models import LumbarCLIP
from lumbarclip.training.config import TrainConfig


class CLIPModule(L.LightningModule):
    def __init__(self, model: LumbarCLIP, config: TrainConfig, prompts: dict[int, list[str]]) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.prompts = prompts
        self.loss = ClipLoss(
            config.loss.kind,
            config.loss.form,
            config.loss.gather_with_grad,
            config.loss.kernel,
            config.loss.identity_weight,
        )
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _step(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self.model(batch["images"], batch["texts"])
        loss = self.loss(out["image_features"], out["text_features"], out["logit_scale"], batch["label_vecs"])
        return loss, out

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, _ = self._step(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["texts"]))
        self.log("train/logit_scale", self.model.logit_scale.detach(), batch_size=len(batch["texts"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss, out = self._step(batch)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch["texts"]))
        self._val.append((out["image_features"].float(), batch["labels"]))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        feats = torch.cat([f for f, _ in self._val])
        labels = torch.cat([y for _, y in self._val])
        self._val.clear()
        if self.trainer.world_size > 1:
            feats = self.all_gather(feats).flatten(0, 1)
            labels = self.all_gather(labels).flatten(0, 1)
        probs = zero_shot_probs(feats, class_embeddings(self.model, self.prompts), self.model.logit_scale)
        score = balanced_accuracy_score(labels.cpu().numpy(), probs.argmax(-1).cpu().numpy())
        self.log("val/zero_shot_balanced_accuracy", float(score), prog_bar=True, rank_zero_only=True)

    def configure_optimizers(self):
        """AdamW (text tower at its own lr, no decay on biases, norms and the temperature),
        linear warm-up then cosine decay per step."""
        opt = self.config.optim
        text_lr = opt.text_lr if opt.text_lr is not None else opt.lr
        groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
        for name, param in self.model.named_parameters():
            if not param.requires_grad:
                continue
            lr = text_lr if name.startswith("text.") else opt.lr
            decay = 0.0 if param.ndim < 2 or "logit_scale" in name else opt.weight_decay
            groups.setdefault((lr, decay), []).append(param)
        optimizer = torch.optim.AdamW(
            [{"params": p, "lr": lr, "weight_decay": wd} for (lr, wd), p in groups.items()]
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(opt.warmup_fraction * total)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
