"""A small metrics.json as `lumbarclip evaluate` writes it (every block, in the writer's order,
with made-up figures), for the reader, model card and ablation tests."""

from __future__ import annotations

KINDS = ("bulge", "desiccation")


def level_block(accuracy: float, n: int, threshold: float = 0.5) -> dict[str, object]:
    """One classifier's contract block at one level."""
    return {
        "accuracy": accuracy,
        "balanced_accuracy": accuracy - 0.05,
        "f1_macro": accuracy - 0.1,
        "f1_weighted": accuracy - 0.02,
        "precision_macro": accuracy - 0.15,
        "recall_macro": accuracy - 0.05,
        "auroc": accuracy + 0.05,
        "auprc": 0.99,
        "confusion_matrix": [[3, 1], [2, n - 6]],
        "n": n,
        "ece": 0.08,
        "brier": 0.07,
        "threshold": threshold,
    }


def scores(accuracy: float) -> dict[str, object]:
    return {"image": level_block(accuracy, 60, 0.75), "patient": level_block(accuracy + 0.04, 10, 0.625)}


def recall(n_images: int) -> dict[str, object]:
    at = {f"{d}_r@{k}": 0.1 * k / 5 for d in ("i2t", "t2i") for k in (1, 5, 10)}
    chance = {f"chance_{d}_r@{k}": 0.01 * k for d in ("i2t", "t2i") for k in (1, 5, 10)}
    return {**at, "n_images": n_images, "n_texts": 10, **chance}


def findings_match() -> dict[str, object]:
    one = {"n_queries": 60, "n_queries_without_match": 0, "map": 0.25, "chance_map": 0.0625}
    one |= {f"{c}r@{k}": 0.03125 * k for k in (1, 5, 10) for c in ("", "chance_")}
    return {"i2t": one, "t2i": {**one, "n_queries": 10}, "threshold": 0.5}


def gate(aurocs: dict[str, float | None]) -> dict[str, object]:
    validated = [k for k, a in aurocs.items() if a is not None and a >= 0.8]
    return {
        "valid_auroc": aurocs,
        "valid_positives": dict.fromkeys(aurocs, 12),
        "validated": validated,
        "not_validated": [k for k in aurocs if k not in validated],
        "min_valid_auroc": 0.8,
        "min_valid_positives": 10,
    }


def finding_scores(aurocs: tuple[float, float], rule: str) -> dict[str, object]:
    per_kind = {
        k: {"auroc": a, "ci95": [a - 0.125, a + 0.0625], "positives": 24, "negatives": 36}
        for k, a in zip(KINDS, aurocs, strict=True)
    }
    return {
        "per_kind": per_kind,
        "macro_auroc": sum(aurocs) / 2,
        "macro_kinds": list(KINDS),
        "min_positives": 20,
        "n_images": 60,
        "n_images_without_level_or_findings": 0,
        "rule": rule,
    }


def per_finding() -> dict[str, object]:
    """The per-finding block with a finding head chosen as the scorer, and the pixel ceiling."""
    head = finding_scores((0.875, 0.9375), "P(finding) = the finding head's sigmoid") | gate(
        {"bulge": 0.84375, "desiccation": 0.75}
    )
    out = finding_scores((0.75, 0.8125), "P(finding) = softmax over prompt ensembles") | gate(
        {"bulge": 0.8125, "desiccation": None}
    )
    out |= {"contrast": "negative", "valid_macro_auroc_by_contrast": {"negative": 0.8125, "normal": 0.78125}}
    out["prompt_pair_cosine"] = {"per_kind": {"bulge": 0.9921875, "desiccation": 0.984375}, "mean": 0.98828125}
    out["finding_head"] = head
    out["valid_macro_auroc_by_scorer"] = {"prompts": 0.8125, "head": 0.796875}
    out["scorer"] = "head"
    out |= {k: head[k] for k in ("valid_auroc", "valid_positives", "validated", "not_validated")}
    out["pixel_ceiling"] = {
        "per_kind": {"bulge": {"auroc": 0.6875, "positives": 24}, "desiccation": {"auroc": None, "positives": 0}},
        "macro_auroc": 0.6875,
        "macro_kinds": ["bulge"],
        "n_train_images": 120,
        "epochs": 3,
        "rule": "the vision tower from random init, one sigmoid per kind",
    }
    return out


def small_metrics() -> dict[str, object]:
    """A metrics.json dict with every block `evaluate_run` writes on the test split."""
    main = scores(0.875)
    ci95 = {f"{lv}.{m}": [v - 0.0625, min(1.0, v + 0.03125)] for lv in ("image", "patient") for m, v in main[lv].items() if m not in ("confusion_matrix", "n", "threshold")}  # fmt: skip
    ci95 |= {"image.auprc": None, "zero_shot.patient.balanced_accuracy": [0.5, 0.75]}
    study = {("n_studies" if k == "n_images" else k): v for k, v in recall(10).items()}
    study["findings_match"] = findings_match()
    retrieval = recall(60) | {"study": study, "findings_match": findings_match()}
    after = {lv: {"ece": 0.03125, "brier": 0.0625, "balanced_accuracy": 0.8125, "accuracy": 0.875} for lv in ("image", "patient")}  # fmt: skip
    return {
        **main,
        "classifier": "linear_probe",
        "zero_shot": scores(0.625),
        "zero_shot_valid_threshold": scores(0.8125),
        "retrieval": retrieval,
        "per_finding": per_finding(),
        "ci95": ci95,
        "baselines": {"majority": scores(0.5), "raw_pixels": scores(0.5625)},
        "label_efficiency": {"linear_probe": {"0.1": {"patients": 4, **scores(0.75)}, "1.0": {"patients": 40, **main}}},
        "integrity": {
            "patient_overlap": {"train/valid": 0, "train/test": 0, "valid/test": 0},
            "pretraining_overlap_checked": True,
            "class_balance": {
                s: {"images": 6 * n, "patients": n, "patients_normal": 2, "patients_abnormal": n - 2}
                for s, n in (("train", 40), ("valid", 10), ("test", 10))
            },
            "skipped_rows": 0,
            "classifier_inputs": {"linear_probe": ["image"], "zero_shot": ["class prompts", "image"], "majority": []},
            "warnings": [],
        },
        "calibration": {
            "method": "platt",
            "fitted_on": "valid",
            "image_map": {"a": 0.5, "b": 0.875},
            "patient_map": {"a": 1.25, "b": 1.125},
            "rule": "image: sigmoid(a*logit + b)",
            "thresholds": {"image": 0.90625, "patient": 0.75},
            "before": after,
            "after": after,
        },
        "input_guard": {
            "method": "Mahalanobis (Ledoit-Wolf)",
            "thresholds": {"embedding": 14.25, "pixels": 28.5},
            "in_rate_valid": 0.99,
            "fitted_on": "240 train images; thresholds on valid so that 99% pass",
            "flagged_test_fraction": 0.015625,
            "header_checks": "DICOM: Modality MR, axial plane",
        },
        "report_bank": {
            "reports": 40,
            "source": "unique (patient, report) pairs of the train split",
            "texts": "synthetic",
            "rule": "image: label of the most similar report",
            "top1_label_agreement": {lv: {"accuracy": 0.84375, "balanced_accuracy": 0.8125} for lv in ("image", "patient")},
            "probe": {lv: {"accuracy": 0.875, "balanced_accuracy": 0.8125} for lv in ("image", "patient")},
        },
        "finetune": scores(0.9375),
        "meta": {
            "split": "test",
            "out": "run/eval-test",
            "manifest": "cohort/manifest.csv",
            "model": "run/model",
            "vision": "resnet18",
            "probe_C": 10.0,
            "raw_pixels_C": 100.0,
            "patient_rule": "patient P(abnormal) = mean of its images' P(abnormal)",
            "zero_shot_rule": "argmax over class prompt ensembles",
            "threshold_rule": "maximise balanced accuracy on the valid split, per level",
            "bootstrap_resamples": 100,
            "ci_method": "scipy.stats.bootstrap BCa 95% interval",
            "seed": 0,
            "supervised": {"epochs": 3, "batch_size": 32, "precision": "32-true"},
            "seconds": {"load_and_embed": 8.5, "bootstrap": 28.25},
        },
    }
