"""The LightningModule: contrastive training of `LumbarCLIP`, validated by zero-shot accuracy."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score
from transformers import get_cosine_schedule_with_warmup

from lumbarclip.errors import InputError
from lumbarclip.inference import class_embeddings, zero_shot_probs
from lumbarclip.losses import ClipLoss, gather_features
from lumbarclip.models import LumbarCLIP
from lumbarclip.training.config import TrainConfig


#: Metrics this module logs that can select the exported epoch, and which way is better.
MONITOR_MODES: dict[str, str] = {
    "val/zero_shot_balanced_accuracy": "max",
    "val/loss": "min",
    "train/loss": "min",
}


class CLIPModule(L.LightningModule):
    def __init__(self, model: LumbarCLIP, config: TrainConfig, prompts: dict[int, list[str]]) -> None:
        super().__init__()
        self.model = model
        self.config = config
        if config.trainer.channels_last:  # NHWC weights, so convolutions run in oneDNN's fast layout
            model.visual.to(memory_format=torch.channels_last)
        self.prompts = prompts
        if model.finding_head is not None and config.loss.labels != "sentence":
            raise InputError("model.finding_head=true needs loss.labels=sentence (its targets are the image's level findings)")
        self.loss = ClipLoss(
            config.loss.kind,
            config.loss.form,
            config.loss.gather_with_grad,
            config.loss.kernel,
            config.loss.identity_weight,
        )
        self._val: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.total_steps: int | None = None  # optimizer steps of the run, set by `train()`

    def _step(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self.model(batch["images"], batch["texts"])
        loss = self.loss(
            out["image_features"], out["text_features"], out["logit_scale"], batch["label_vecs"], batch["text_label_vecs"]
        )
        if "finding_logits" in out:  # the image's own level findings (labels=sentence: 0/1 over LEVEL_KINDS)
            # over the global batch, gathered as the CLIP loss is, so one process and several agree
            logits, targets = gather_features(
                out["finding_logits"].float(), batch["label_vecs"].float(), gather_with_grad=self.config.loss.gather_with_grad
            )
            loss = loss + self.config.loss.finding_weight * F.binary_cross_entropy_with_logits(logits, targets)
        return loss, out

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, _ = self._step(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["texts"]))
        self.log("train/logit_scale", self.model.logit_scale.detach(), batch_size=len(batch["texts"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss, out = self._step(batch)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch["texts"]))
        self._val.append((out["image_features"].float(), batch["labels"], batch["indices"]))

    def on_validation_epoch_end(self) -> None:
        """Zero-shot balanced accuracy on the whole valid split: every rank gathers all ranks'
        features and drops the repeats that padded the ranks' shares to equal lengths."""
        if not self._val:
            return
        feats, labels, indices = (torch.cat(parts) for parts in zip(*self._val))
        self._val.clear()
        if self.trainer.world_size > 1:
            feats, labels, indices = (self.all_gather(t).flatten(0, 1) for t in (feats, labels, indices))
        order = torch.argsort(indices, stable=True)
        first = torch.ones(1, dtype=torch.bool, device=indices.device)  # on the features' device (CUDA too)
        keep = order[torch.cat([first, indices[order][1:] != indices[order][:-1]])]
        probs = zero_shot_probs(feats[keep], class_embeddings(self.model, self.prompts), self.model.logit_scale)
        score = balanced_accuracy_score(labels[keep].cpu().numpy(), probs.argmax(-1).cpu().numpy())
        self.log("val/zero_shot_balanced_accuracy", float(score), prog_bar=True, sync_dist=True)  # equal on all ranks

    def optimizer_step(self, *args, **kwargs) -> None:
        """After each optimizer step, clamp the temperature parameter in place (open_clip's way:
        its gradient stays alive, so it can come back from the cap)."""
        super().optimizer_step(*args, **kwargs)
        self.model.clamp_logit_scale_()

    def _frozen_text_keys(self) -> set[str]:
        """State-dict keys of frozen text-tower weights: rebuilt from the pretrained tower the
        config names, so checkpoints leave them out (a frozen MiniLM is 90 MB a checkpoint)."""
        return {f"model.text.{n}" for n, p in self.model.text.named_parameters() if not p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Random states beside the weights, so a resumed run draws what it would have drawn
        (dropout; data randomness is per sample, see `EpochSampler`)."""
        for key in self._frozen_text_keys():
            checkpoint["state_dict"].pop(key, None)
        checkpoint["rng_states"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["rng_states"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        expected = set(self.state_dict()) - self._frozen_text_keys()
        if set(checkpoint["state_dict"]) != expected:
            raise InputError("checkpoint does not match this model (different config or code); start the run again")
        self.strict_loading = False  # only the frozen text weights are absent, checked above
        states = checkpoint.get("rng_states", {})
        if "torch" in states:
            torch.set_rng_state(states["torch"])
        if "cuda" in states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])

    def _adamw_kernel(self) -> dict[str, bool]:
        """`optim.implementation`: fused (one kernel over all tensors, where PyTorch's CPU
        default is the for-loop, a kernel per tensor), foreach or for-loop. fp16 loss scaling
        unscales inside a fused step, after clipping would have run, so 16-bit precision gets
        foreach instead."""
        kernel = self.config.optim.implementation
        if kernel == "fused" and str(self.trainer.precision).startswith("16"):
            kernel = "foreach"
        return {"fused": kernel == "fused", "foreach": kernel == "foreach"}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Norm clipping done here for a fused AdamW: Lightning's mixed-precision plugin refuses
        every fused optimizer for the sake of fp16 loss scaling, which bf16 does not use."""
        if gradient_clip_val and optimizer.defaults.get("fused"):
            torch.nn.utils.clip_grad_norm_(self.parameters(), gradient_clip_val)
        else:
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

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
            [{"params": p, "lr": lr, "weight_decay": wd} for (lr, wd), p in groups.items()],
            **self._adamw_kernel(),
        )
        total = self.total_steps or max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = get_cosine_schedule_with_warmup(optimizer, int(opt.warmup_fraction * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
