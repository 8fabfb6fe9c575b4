"""LumbarCLIP: align axial lumbar spine MRI with radiology reports, diagnose from the image."""

__version__ = "0.1.0"
