"""Records and images: manifests and splits, image I/O (PNG, DICOM, NIfTI), the one
preprocessing, datasets and shards, disc boxes, the lesion truth of synthetic cohorts, and
patient-ID privacy. Nothing here loads a model."""
