"""`lumbarclip ablate`: the grid, the seed aggregation of the Markdown table (a t-interval over
seeds, checked against the textbook formula), bad input, and
(slow) a real tiny grid that resumes without retraining."""

import csv
import math
import statistics

import pytest
from scipy import stats as scipy_stats

from _metrics_file import small_metrics
from lumbarclip.cli import main
from lumbarclip.evaluation.metrics_file import parse_metrics
from lumbarclip.experiments import LOSS_VARIANTS, AblationGrid, _row_metrics, markdown_table, seed_interval


def _metrics(bacc, lo, hi):
    metrics = small_metrics()
    for block in (metrics, metrics["zero_shot"]):
        for level in ("image", "patient"):
            block[level] |= {"balanced_accuracy": bacc, "auroc": 0.9}
    metrics["retrieval"] |= {"i2t_r@1": 0.2, "i2t_r@5": 0.6, "t2i_r@1": 0.3, "t2i_r@5": 0.7}
    metrics["ci95"] = {"patient.balanced_accuracy": [lo, hi]}
    return parse_metrics(metrics)


def test_a_row_holds_each_column_of_the_metrics_and_blanks_where_a_block_is_absent():
    metrics = small_metrics()
    row = _row_metrics(parse_metrics(metrics))
    assert row["probe_patient_acc"] == metrics["patient"]["accuracy"]
    assert (row["probe_patient_acc_lo"], row["probe_patient_acc_hi"]) == tuple(metrics["ci95"]["patient.accuracy"])
    assert row["zs_patient_bacc"] == metrics["zero_shot"]["patient"]["balanced_accuracy"]
    assert (row["zs_patient_bacc_lo"], row["zs_patient_bacc_hi"]) == (0.5, 0.75)
    assert row["zs_patient_auroc_lo"] is None  # no interval in ci95
    assert row["chance_i2t_r@5"] == metrics["retrieval"]["chance_i2t_r@5"]
    assert row["study_findings_i2t_map"] == metrics["retrieval"]["study"]["findings_match"]["i2t"]["map"]
    assert row["finding_zs_macro_auroc"] == metrics["per_finding"]["macro_auroc"]  # the prompts' macro AUROC
    without = {**metrics, "per_finding": {}, "retrieval": {**metrics["retrieval"], "findings_match": None}}
    row = _row_metrics(parse_metrics(without))
    assert row["finding_zs_macro_auroc"] is None and row["findings_i2t_map"] is None


def test_grid_is_the_full_product_of_named_variants():
    grid = AblationGrid.named(["resnet", "test_vit"], ["linear", "mlp"], ["soft-findings", "hard"], [0, 1])
    cells = grid.cells()
    assert len(cells) == 16
    assert len({tuple(c.values()) for c in cells}) == 16
    assert cells[0] == {"vision": "resnet", "head": "linear", "loss": "soft-findings", "seed": 0}
    assert grid.cell_overrides(cells[0]) == [
        "model.vision=resnet10t",
        "model.head=linear",
        *LOSS_VARIANTS["soft-findings"],
        "seed=0",
    ]
    assert grid.cell_overrides(cells[-1])[0] == "model.vision=test_vit"  # a timm name as it is


def test_builtin_variants_build_valid_configs():
    from lumbarclip.training import load_config

    grid = AblationGrid.named(["resnet", "vit", "swin"], losses=list(LOSS_VARIANTS), seeds=[0])
    configs = {(c["vision"], c["loss"]): load_config("cpu-demo", grid.cell_overrides(c)) for c in grid.cells()}
    assert configs["swin", "hard"].model.vision == "swin_tiny_patch4_window7_224"
    assert configs["vit", "hard"].model.vision_kwargs == {"patch_size": 8, "depth": 4}
    assert configs["resnet", "soft-findings"].loss.labels == "findings"
    assert configs["resnet", "soft-binary"].loss.labels == "binary"
    assert configs["resnet", "hard"].loss.kind == "hard"


def test_markdown_aggregates_seeds_with_std_and_a_t_interval_over_seeds():
    seeds = [(0.6, 0.5, 0.7), (0.8, 0.7, 0.9), (0.75, 0.7, 0.8)]
    rows = [
        {"vision": "r", "head": "linear", "loss": "soft", "seed": s, **_row_metrics(_metrics(b, lo, hi))}
        for s, (b, lo, hi) in enumerate(seeds)
    ]
    rows.append(
        {"vision": "r", "head": "mlp", "loss": "soft", "seed": 0, **_row_metrics(_metrics(0.5, 0.4, 0.6))}
    )
    assert rows[0]["probe_patient_bacc_lo"] == 0.5 and rows[0]["probe_image_bacc_lo"] is None  # per-run CI in the CSV
    table = markdown_table(rows).splitlines()
    assert len(table) == 2 + 2  # header, rule, one line per (vision, head, loss)
    linear = table[2].split(" | ")
    header = table[0].split(" | ")
    # written out: mean 0.7167, sample std 0.1041, t(0.975, df=2) = 4.3027 -> 0.7167 -/+ 0.2586
    assert linear[header.index("probe_patient_bacc")] == "0.717 ± 0.104 [0.46, 0.98]"
    assert linear[header.index("i2t_r@1")] == "0.200 ± 0.000 [0.20, 0.20]"  # every column, identical seeds
    assert (
        table[3].split(" | ")[header.index("probe_patient_bacc")] == "0.500"
    )  # one seed: no std, no interval (the run's bootstrap CI is not a spread over seeds)


@pytest.mark.parametrize("values", [[0.61, 0.74], [0.55, 0.7, 0.62, 0.81, 0.66], [3.0, -1.0, 2.5]])
def test_seed_interval_is_the_t_interval_of_the_mean(values):
    n, mean, std = len(values), statistics.mean(values), statistics.stdev(values)
    half = scipy_stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)  # textbook formula, not t.interval
    assert seed_interval(values) == pytest.approx((mean - half, mean + half), abs=1e-12)
    naive = (mean - 1.96 * std / math.sqrt(n), mean + 1.96 * std / math.sqrt(n))
    assert seed_interval(values)[0] < naive[0]  # wider than a normal interval at few seeds
    assert seed_interval(values[:1]) is None


@pytest.mark.parametrize(
    "args, message",
    [
        (["--loss", "soft,fuzzy"], "fuzzy"),
        (["--head", "conv"], "conv"),
        (["--preset", "no-such-preset"], "no-such-preset"),
        (["--set", "model.nothing=1"], "model.nothing"),
    ],
)
def test_bad_input_is_refused_before_training(tmp_path, capsys, args, message):
    manifest = tmp_path / "m.csv"
    manifest.write_text("image_path,patient_id,split,label,report\n")
    assert (
        main(
            ["ablate", "--data", str(manifest), "--out", str(tmp_path / "out"), "--vision", "resnet18", *args]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("lumbarclip ablate: error:") and message in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_existing_table_is_not_overwritten(tmp_path, capsys):
    (tmp_path / "ablation.csv").write_text("kept\n")
    assert (
        main(["ablate", "--data", str(tmp_path / "m.csv"), "--out", str(tmp_path), "--vision", "resnet18"])
        == 2
    )
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "ablation.csv").read_text() == "kept\n"


@pytest.mark.slow
def test_tiny_grid_end_to_end_and_resume(tmp_path, capsys):
    from lumbarclip.synth.cohort import CohortConfig, make_cohort

    manifest = make_cohort(
        tmp_path / "cohort", CohortConfig(n_patients=24, size=32, abnormal_rate=0.5), progress=False
    )
    args = [
        "ablate",
        "--data",
        str(manifest),
        "--out",
        str(tmp_path / "abl"),
        "--vision",
        "test_resnet",
        "--head",
        "linear,mlp",
        "--seeds",
        "0",
        "--bootstrap",
        "50",
        "--no-progress",
        "--set",
        "model.image_size=32",
        "--set",
        "model.embed_dim=16",
        "--set",
        "trainer.max_epochs=1",
        "--set",
        "data.batch_size=16",
    ]
    assert main(args) == 0
    rows = list(csv.DictReader((tmp_path / "abl" / "ablation.csv").open()))
    assert [(r["head"], r["seed"]) for r in rows] == [("linear", "0"), ("mlp", "0")]
    assert all(0 <= float(r["probe_patient_bacc"]) <= 1 for r in rows)
    assert "| test_resnet | mlp | soft | 1 |" in (tmp_path / "abl" / "ablation.md").read_text()
    summary = tmp_path / "abl" / "runs" / "test_resnet-linear-soft-0" / "train_summary.json"
    stamp = summary.stat().st_mtime_ns
    assert main([*args, "--overwrite"]) == 0  # finished runs are reused, not retrained
    assert summary.stat().st_mtime_ns == stamp
