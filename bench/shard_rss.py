"""Peak resident memory of one training epoch, streaming WebDataset shards or from the in-RAM
cache, so the two can be compared at two cohort sizes.

    lumbarclip synth --out C2K --patients 2000 --size 32
    lumbarclip data shard C2K/manifest.csv --out S2K
    python bench/shard_rss.py S2K --out OUT/rss-s2k            # streamed
    python bench/shard_rss.py C2K/manifest.csv --out OUT/rss-c2k  # in-RAM cache (the fast path)
    python bench/shard_rss.py S2K --out OUT/x --loader-only       # the data path alone

Run each measurement in its own process (peak RSS is per process). Prints one JSON line:
source, train images, peak RSS (MiB) before training and at the end of the epoch, seconds.
"""

from __future__ import annotations

import argparse
import json
import resource
import time


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="shard folder or manifest CSV")
    p.add_argument("--out", required=True, help="run folder (replaced)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument(
        "--loader-only",
        action="store_true",
        help="one epoch of the train and valid loaders (decode, augment, collate) without the model step",
    )
    args = p.parse_args()

    import torch

    from lumbarclip.models import create_model
    from lumbarclip.models.config import ModelConfig
    from lumbarclip.training import load_config, train

    torch.set_num_threads(1)
    config = load_config(
        "cpu-demo",
        [
            "model.vision=test_resnet",
            f"model.image_size={args.image_size}",
            "model.embed_dim=32",
            f"data.batch_size={args.batch_size}",
            "trainer.max_epochs=1",
            "trainer.precision=32-true",
            "trainer.checkpoint_every_n_steps=0",
        ],
    )
    if args.loader_only:
        from lumbarclip.data.datamodule import PairDataModule

        data = PairDataModule(args.source, config.data, config.model.image_size, config.loss.labels, config.seed)
        data.setup("fit")
        before = peak_mib()
        started = time.perf_counter()
        seen = {"train": 0, "valid": 0}
        for split, loader in (("train", data.train_dataloader()), ("valid", data.val_dataloader())):
            for batch in loader:
                seen[split] += len(batch["texts"])
        summary = {"train_images": seen["train"], "valid_images": seen["valid"]}
    else:
        create_model(ModelConfig(**{**config.model.__dict__}))  # the towers' own memory, before any data
        before = peak_mib()
        started = time.perf_counter()
        run = train(config, args.source, args.out, progress=False, overwrite=True)
        summary = json.loads((run / "train_summary.json").read_text())
    print(
        json.dumps(
            {
                "source": args.source,
                "mode": "loader only" if args.loader_only else "training epoch",
                "train_images": summary["train_images"],
                "valid_images": summary["valid_images"],
                "peak_rss_mib_models_loaded": round(before, 1),
                "peak_rss_mib_epoch": round(peak_mib(), 1),
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
