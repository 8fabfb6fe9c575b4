"""The one seeded, stratified, patient-disjoint train/valid/test split of the project (synthetic
cohorts and the Mendeley adapter both use it)."""

from __future__ import annotations

from collections.abc import Mapping

from sklearn.model_selection import train_test_split

from lumbarclip.data.manifest import SPLITS

SPLIT_FRACTIONS: tuple[float, float, float] = (0.70, 0.15, 0.15)


def split_patients(
    labels: Mapping[str, int],
    seed: int = 0,
    fractions: tuple[float, float, float] = SPLIT_FRACTIONS,
) -> dict[str, str]:
    """Patient-disjoint train/valid/test split of `labels` (patient -> 0/1), stratified by label
    where class sizes allow (scikit-learn's `train_test_split`, twice).

    Reproducible: the same patients, labels and seed give the same split (515 patients give
    360/77/78 with the default fractions). A part too small to hold a patient stays empty.
    """
    ids = sorted(labels)
    held_out = fractions[1] + fractions[2]
    train, rest = _stratified(ids, labels, held_out, seed)
    valid, test = _stratified(rest, labels, fractions[2] / held_out if held_out else 0.0, seed)
    return {pid: name for name, part in zip(SPLITS, (train, valid, test)) for pid in part}


def _stratified(
    ids: list[str], labels: Mapping[str, int], size: float, seed: int
) -> tuple[list[str], list[str]]:
    """(kept, held out): sklearn's split, stratified unless a class is too small for that;
    all kept when `size` is 0 or there are too few ids to hold one out."""
    if size <= 0 or not ids:
        return list(ids), []
    if size >= 1:
        return [], list(ids)
    for stratify in ([labels[i] for i in ids], None):
        try:
            return train_test_split(ids, test_size=size, stratify=stratify, random_state=seed)
        except ValueError:  # a class with one member, fewer held-out ids than classes, too few ids
            continue
    return list(ids), []
