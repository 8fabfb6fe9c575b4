"""How often the input guard refuses: on the model's own test images (target <= 5% flagged) and
on inputs the model never saw (target >= 95% flagged).

    python bench/ood.py --model demo-out/run/model --data demo-out/cohort/manifest.csv [--out ood.json]
        [--unseen "real mid-sagittal slices=real-out/cohort/manifest.csv"]   # a phantom model
    python bench/ood.py --model real-out/run/model --data real-out/cohort/manifest.csv \
        --unseen "phantoms=demo-out/cohort/manifest.csv@test"               # the real model

Unseen inputs, all offline: pydicom's real MR and CT test files, nibabel's real NIfTI test
volumes (brain MR, middle slice), matplotlib's sample photographs, and generated images (uniform
and Gaussian noise, flat grey, smooth gradients, checkerboards). Each goes through
`Predictor.predict` as a user's file would, so the DICOM header checks (MR, the model's plane,
lumbar) count as well as the guard; the table splits the two. `--unseen NAME=MANIFEST[@SPLIT]`
adds the images of another cohort (all splits, or one) as a further unseen set.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from lumbarclip.data.manifest import read_manifest
from lumbarclip.inference.predict import Predictor

TARGET_IN, TARGET_OUT = 0.05, 0.95


def unseen_sets(folder: Path, seed: int = 0, n_generated: int = 20) -> dict[str, list[Path]]:
    """Inputs the model never saw, by source; generated ones are written into `folder`."""
    import matplotlib
    import nibabel
    import pydicom.data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns that it cannot download its extra files
        dicom = sorted({*pydicom.data.get_testdata_files("MR*"), *pydicom.data.get_testdata_files("emri*"),
                        *pydicom.data.get_testdata_files("CT_small*")})  # fmt: skip
    nifti = sorted(p for p in (Path(nibabel.__file__).parent / "tests" / "data").glob("*.nii*") if "dconn" not in p.name)
    sample = Path(matplotlib.get_data_path()) / "sample_data"
    photos = [p for p in (sample / "grace_hopper.jpg", sample / "Minduka_Present_Blue_Pack.png", sample / "logo2.png") if p.exists()]
    rng = np.random.default_rng(seed)
    generated: list[Path] = []
    size = 128
    yy, xx = np.mgrid[:size, :size] / size
    makers = {
        "uniform": lambda: rng.random((size, size)),
        "gauss": lambda: np.clip(rng.normal(0.5, 0.2, (size, size)), 0, 1),
        "flat": lambda: np.full((size, size), rng.random()),
        "gradient": lambda: (np.cos(rng.random() * 6.28) * xx + np.sin(rng.random() * 6.28) * yy) % 1.0,
        "checker": lambda: ((xx * rng.integers(2, 16)).astype(int) + (yy * rng.integers(2, 16)).astype(int)) % 2 * 1.0,
    }
    for name, make in makers.items():
        for i in range(max(1, n_generated // len(makers))):
            path = folder / f"{name}_{i:02d}.png"
            Image.fromarray((make() * 255).astype(np.uint8)).save(path)
            generated.append(path)
    return {
        "pydicom MR/CT test files": [Path(p) for p in dicom],
        "nibabel NIfTI test volumes": nifti,
        "photographs (matplotlib samples)": photos,
        "generated (noise, flat, gradient, checker)": generated,
    }


def flagged(predictor: Predictor, paths: list[Path]) -> dict[str, object]:
    """Counts of one set: refused by the header, by the embedding guard, unreadable, accepted."""
    result = predictor.predict(paths, top_k=0)
    header = sum(1 for line in result.images if not line.in_distribution and "input guard" not in str(line.reason))
    guard = sum(1 for line in result.images if not line.in_distribution and "input guard" in str(line.reason))
    refused_in_folder = sum(1 for s in result.skipped if s.reason.startswith("not assessed"))
    n = len(result.images) + refused_in_folder
    out = header + guard + refused_in_folder
    by_view: dict[str, int] = {}
    for line in result.images:
        reason = line.reason or ""
        if "input guard: " in reason:
            for part in reason.split("input guard: ", 1)[1].split(", "):
                view = part.split(" ")[0]
                by_view[view] = by_view.get(view, 0) + 1
    return {
        "n": n,
        "flagged": out,
        "rate": out / n if n else None,
        "by_header": header + refused_in_folder,
        "by_guard": guard,
        "by_view": by_view,  # images each guard view puts outside (an image may count under several)
        "unreadable": len(result.skipped) - refused_in_folder,
        "scores": [line.ood_score for line in result.images],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model folder written by lumbarclip evaluate")
    ap.add_argument("--data", required=True, help="the cohort manifest the model was evaluated on")
    ap.add_argument("--split", default="test", help="split whose phantoms should be accepted (default: test)")
    ap.add_argument("--out", help="write the figures as JSON here")
    ap.add_argument(
        "--unseen", action="append", default=[], metavar="NAME=MANIFEST[@SPLIT]",
        help="another cohort's images as an unseen set (repeatable)",
    )  # fmt: skip
    args = ap.parse_args(argv)

    predictor = Predictor.load(args.model, salt="bench")
    own = [r.image_path for r in read_manifest(args.data, check_files=False).split(args.split)]
    own_name = f"own {args.split} images"
    rows: dict[str, dict[str, object]] = {own_name: flagged(predictor, own)}
    for spec in args.unseen:
        name, _, where = spec.partition("=")
        manifest, _, split = where.partition("@")
        records = read_manifest(manifest, check_files=False).records
        rows[name] = flagged(predictor, [r.image_path for r in records if not split or r.split == split])
    with tempfile.TemporaryDirectory() as tmp:
        for name, paths in unseen_sets(Path(tmp)).items():
            rows[name] = flagged(predictor, paths)
    unseen = [r for name, r in rows.items() if name != own_name]
    total = {"n": sum(r["n"] for r in unseen), "flagged": sum(r["flagged"] for r in unseen)}  # type: ignore[misc]
    total["rate"] = total["flagged"] / total["n"] if total["n"] else None
    own_rate = rows[own_name]["rate"]
    thresholds = {name: round(view.threshold, 2) for name, view in predictor.guard.views.items()}
    print(f"input guard thresholds {thresholds} (valid in-distribution rate {predictor.guard.in_rate:.0%})")
    print(f"{'set':44s} {'n':>5s} {'flagged':>8s} {'rate':>6s} {'header':>7s} {'guard':>6s}")
    for name, r in rows.items():
        rate = f"{r['rate']:6.3f}" if r["rate"] is not None else "     -"
        print(f"{name[:44]:44s} {r['n']:5d} {r['flagged']:8d} {rate} {r['by_header']:7d} {r['by_guard']:6d}")
    print(f"{'all unseen inputs':44s} {total['n']:5d} {total['flagged']:8d} {total['rate']:6.3f}")
    verdict = {
        "own_flagged_rate": own_rate,
        "own_target_max": TARGET_IN,
        "own_met": own_rate is not None and own_rate <= TARGET_IN,
        "unseen_flagged_rate": total["rate"],
        "unseen_target_min": TARGET_OUT,
        "unseen_met": total["rate"] is not None and total["rate"] >= TARGET_OUT,
    }
    print(json.dumps(verdict))
    if args.out:
        doc = {"thresholds": thresholds, "in_rate": predictor.guard.in_rate, "sets": rows, "unseen": total, **verdict}
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
