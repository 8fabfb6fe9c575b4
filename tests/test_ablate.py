"""`lumbarclip ablate`: the grid, the seed aggregation of the Markdown table, bad input, and
(slow) a real tiny grid that resumes without retraining."""

import csv

import pytest

from lumbarclip.cli import main
from lumbarclip.experiments import LOSS_VARIANTS, AblationGrid, _row_metrics, markdown_table


def _metrics(bacc, lo, hi):
    block = {"balanced_accuracy": bacc, "auroc": 0.9}
    return {
        "image": block,
        "patient": block,
        "zero_shot": {"image": block, "patient": block},
        "retrieval": {"i2t_r@1": 0.2, "i2t_r@5": 0.6, "t2i_r@1": 0.3, "t2i_r@5": 0.7},
        "ci95": {"patient.balanced_accuracy": [lo, hi]},
    }


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


def test_markdown_aggregates_seeds_with_std_and_mean_ci():
    rows = [
        {"vision": "r", "head": "linear", "loss": "soft", "seed": s, **_row_metrics(_metrics(b, lo, hi))}
        for s, (b, lo, hi) in enumerate([(0.6, 0.5, 0.7), (0.8, 0.7, 0.9)])
    ]
    rows.append(
        {"vision": "r", "head": "mlp", "loss": "soft", "seed": 0, **_row_metrics(_metrics(0.5, 0.4, 0.6))}
    )
    assert rows[0]["probe_patient_bacc_lo"] == 0.5 and rows[0]["probe_image_bacc_lo"] is None
    table = markdown_table(rows).splitlines()
    assert len(table) == 2 + 2  # header, rule, one line per (vision, head, loss)
    linear = table[2].split(" | ")
    header = table[0].split(" | ")
    cell = linear[header.index("probe_patient_bacc")]
    assert cell == "0.700 ± 0.141 [0.60, 0.80]"  # std of (0.6, 0.8) with ddof=1; CI bounds averaged
    assert (
        table[3].split(" | ")[header.index("probe_patient_bacc")] == "0.500 [0.40, 0.60]"
    )  # one seed: no std


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
