"""Build the ignored folder that `scripts/gpu_ablation.sh` carries to a lent GPU machine.

A device call may carry 64 MiB: the packaged MiniLM (88 MB) goes as fp16 safetensors (its
config.json says float32, so transformers loads it back at full width), the notes CSV of
`scripts/ablation_notes.py`, and the pure-Python wheels the GPU image lacks (pydicom and nibabel,
imported by `data/imageio.py`), fetched by pip for Python 3.12:

    python scripts/devcarry.py --notes notes.csv --out .devcarry
    echo .devcarry/ >> .git/info/exclude    # never committed
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

from lumbarclip.models.text import resolve_text_tower

WHEELS = ("pydicom==3.0.2", "nibabel==5.4.2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notes", type=Path, required=True, help="notes CSV from scripts/ablation_notes.py")
    parser.add_argument("--out", type=Path, default=Path(".devcarry"))
    args = parser.parse_args()
    source = Path(resolve_text_tower("minilm"))
    minilm = args.out / "minilm"
    minilm.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        if f.is_file() and f.name != "model.safetensors":
            shutil.copy2(f, minilm / f.name)
    weights = {k: v.half() if v.is_floating_point() else v for k, v in load_file(source / "model.safetensors").items()}
    save_file(weights, minilm / "model.safetensors")
    config = json.loads((minilm / "config.json").read_text())
    config.update(torch_dtype="float32", dtype="float32")
    (minilm / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    shutil.copy2(args.notes, args.out / "notes.csv")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
         "3.12", "--implementation", "cp", "-d", str(args.out / "whl"), *WHEELS],
        check=True,
    )  # fmt: skip
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"{args.out}: {size / 2**20:.1f} MiB (a device call carries at most 64 MiB with the tree)")


if __name__ == "__main__":
    main()
