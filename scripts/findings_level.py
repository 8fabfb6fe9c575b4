"""Findings-level figures of a trained model on one split, from that split's images only:
same-patient retrieval, findings-match retrieval, per-finding zero-shot (AUROC, 300 patient
bootstrap resamples) and the binary zero-shot balanced accuracy. `lumbarclip evaluate` computes
the same inside metrics.json plus the linear probe; this is the cheap check when CPU is short.

    python scripts/findings_level.py MODEL_DIR MANIFEST SPLIT OUT.json
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch

from lumbarclip.bundle import ModelFolder
from lumbarclip.data.manifest import read_manifest
from lumbarclip.evaluation.findings import finding_sets, per_finding_scores
from lumbarclip.evaluation.predictions import Predictions
from lumbarclip.evaluation.retrieval import findings_match_metrics, retrieval_metrics
from lumbarclip.evaluation.zeroshot import default_prompts, zero_shot_abnormal_proba
from lumbarclip.inference import class_embeddings, embed_texts, encode_images, load_images
from lumbarclip.inference.findings import FindingClassifier

model_dir, manifest, split, out = sys.argv[1:5]
folder = ModelFolder.load(model_dir, require=("preprocess",))
model = folder.model()
recs = read_manifest(manifest).split(split)
emb = encode_images(model, load_images([r.image_path for r in recs], folder.preprocess, False))
pids = np.array([r.patient_id for r in recs])
texts = sorted({(r.patient_id, r.report) for r in recs})
temb = embed_texts(model, [t for _, t in texts])
ret = retrieval_metrics(emb, pids, temb, np.array([p for p, _ in texts]))
sets = finding_sets(recs)
byp = dict(zip(pids.tolist(), sets))
ret["findings_match"] = findings_match_metrics(emb, sets, temb, [byp[p] for p, _ in texts])
fz = per_finding_scores(FindingClassifier.build(model).scores(emb, [r.level or None for r in recs]), recs, 300, 0)
with torch.no_grad():
    classes = class_embeddings(model, default_prompts()).cpu()
zs = Predictions(np.array([r.label for r in recs]), zero_shot_abnormal_proba(model, emb, classes), pids).metrics()
res = {"retrieval": ret, "per_finding": fz, "zero_shot": {lv: {k: zs[lv][k] for k in ("balanced_accuracy", "auroc")} for lv in ("image", "patient")}}
json.dump(res, open(out, "w"), indent=1)
r, m = ret, ret["findings_match"]["i2t"]
print(f"i2t R@1/5/10 {r['i2t_r@1']:.3f}/{r['i2t_r@5']:.3f}/{r['i2t_r@10']:.3f} chance {r['chance_i2t_r@1']:.3f}/{r['chance_i2t_r@5']:.3f}/{r['chance_i2t_r@10']:.3f}; t2i {r['t2i_r@1']:.3f}/{r['t2i_r@5']:.3f}/{r['t2i_r@10']:.3f} chance {r['chance_t2i_r@1']:.3f}/{r['chance_t2i_r@5']:.3f}/{r['chance_t2i_r@10']:.3f}")
print(f"findings-match i2t mAP {m['map']:.3f} (chance {m['chance_map']:.3f}) R@1/5 {m['r@1']:.3f}/{m['r@5']:.3f}; t2i mAP {ret['findings_match']['t2i']['map']:.3f}")
print(f"per-finding macro AUROC {fz['macro_auroc']} over {fz['macro_kinds']}")
for k, b in fz["per_kind"].items():
    print(f"  {k}: {b['auroc']} {b['ci95']} pos {b['positives']}")
print("zero-shot bal acc image/patient", res["zero_shot"]["image"]["balanced_accuracy"], res["zero_shot"]["patient"]["balanced_accuracy"])
