"""Using a trained model: embeddings, the zero-shot classifier, and (in submodules) diagnosis
of new scans. Names are imported on first use (PEP 562), so light importers stay light."""

from lumbarclip._lazy import lazy_exports

_EXPORTS = {
    "load_images": "embed",
    "encode_images": "embed",
    "embed_images": "embed",
    "embed_texts": "embed",
    "class_embeddings": "embed",
    "zero_shot_probs": "embed",
    "finding_prompts": "findings",
    "FindingClassifier": "findings",
    "ImageScorer": "scorer",
    "OnnxImageScorer": "onnx",
    "export_onnx": "onnx",
    "fit_operating_point": "operating_point",
    "Predictor": "predict",
    "PredictResult": "results",
    "build_report_bank": "reportbank",
    "saliency_maps": "saliency",
    "save_overlay": "saliency",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
