"""Evaluation: metrics with patient-bootstrap CIs, linear probe, zero-shot, baselines,
supervised fine-tune / from-scratch, retrieval, integrity checks and report.html (imported on
use, so `metrics` alone does not load torch). Experiments that train and then evaluate (the
ablation grid) live above both, in `lumbarclip.experiments`."""

from lumbarclip._lazy import lazy_exports

_EXPORTS = {
    "EvalOptions": "evaluate",
    "evaluate_run": "evaluate",
    "format_summary": "evaluate",
    "classification_metrics": "metrics",
    "bootstrap_ci": "metrics",
    "MetricsFile": "metrics_file",
    "read_metrics": "metrics_file",
    "Predictions": "predictions",
    "retrieval_metrics": "retrieval",
    "integrity_checks": "integrity",
    "ReportInputs": "report",
    "write_html_report": "report",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
