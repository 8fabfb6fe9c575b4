import json
import shlex

import pytest

from lumbarclip.cli import main


@pytest.mark.slow
def test_demo_runs_end_to_end_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--patients", "30", "--epochs", "1"]) == 0
    printed = capsys.readouterr().out
    assert "linear_probe" in printed and "metrics.json" in printed
    metrics = json.loads((out / "run" / "eval-test" / "metrics.json").read_text())
    assert {"image", "patient", "zero_shot", "retrieval", "ci95", "baselines"} <= set(metrics)
    assert (out / "run" / "eval-test" / "report.html").stat().st_size > 10_000
    assert (out / "run" / "model" / "model.safetensors").is_file()
    # It ends with a predict command on a test patient, and that command works.
    command = shlex.split(printed.strip().splitlines()[-1])
    assert command[:2] == ["lumbarclip", "predict"] and len(command) == 10  # --model M + 6 images
    assert main(command[1:]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["type"] for line in lines] == ["image"] * 6 + ["study"]
    assert lines[0]["nearest_reports"]  # the demo builds the report bank
    # A second demo into the same folder would replace the user's run: refused, exit 2.
    assert main(["demo", "--out", str(out), "--patients", "30", "--epochs", "1"]) == 2
    assert "not empty" in capsys.readouterr().err


def test_demo_help_names_its_outputs(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--help"])
    assert exit_info.value.code == 0
    assert "metrics.json" in capsys.readouterr().out
