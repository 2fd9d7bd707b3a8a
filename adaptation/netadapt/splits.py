"""Stratified train / holdout / validation splits of labelled samples (numpy only, no torch).

Shared by the in-memory datasets (``data``) and the torch-free check of an uploaded image folder
(``image_folder.summarise_image_folder``), so both split the same images the same way.
"""

from __future__ import annotations

import numpy as np


def check_fraction(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be a fraction strictly between 0 and 1, got {value!r}")


def split_count(name: str, size: int | float, population: int) -> int:
    """Turn a split size (an int count, or a float fraction of ``population``) into a count."""
    if isinstance(size, bool):
        raise ValueError(f"{name} must be an int count or a float fraction, got {size!r}")
    if isinstance(size, int):
        if not 1 <= size < population:
            raise ValueError(f"{name}={size} must be between 1 and {population - 1} (of {population} samples)")
        return size
    if isinstance(size, float):
        check_fraction(name, size)
        return min(population - 1, max(1, round(size * population)))
    raise ValueError(f"{name} must be an int count or a float fraction, got {size!r}")


def allocate_per_class(
    class_sizes: np.ndarray, total: int, minimum: np.ndarray, maximum: np.ndarray
) -> np.ndarray:
    """Split ``total`` among classes proportionally to ``class_sizes`` within [minimum, maximum].

    Largest-remainder rounding keeps each class's share as close to proportional as
    integers allow while the counts add up to ``total`` exactly (clamped to the bounds).
    """
    total = int(np.clip(total, minimum.sum(), maximum.sum()))
    exact = total * class_sizes / class_sizes.sum()
    counts = np.clip(np.floor(exact).astype(np.int64), minimum, maximum)
    # Priority of each class for the next +1 (or -1): its unrounded remainder, lowered
    # (raised) by one after each adjustment so the adjustments rotate between classes.
    priority = exact - np.floor(exact)
    while counts.sum() < total:
        candidates = np.flatnonzero(counts < maximum)
        chosen = candidates[np.argmax(priority[candidates])]
        counts[chosen] += 1
        priority[chosen] -= 1.0
    while counts.sum() > total:
        candidates = np.flatnonzero(counts > minimum)
        chosen = candidates[np.argmin(priority[candidates])]
        counts[chosen] -= 1
        priority[chosen] += 1.0
    return counts


def stratified_take(
    indices: np.ndarray,
    labels: np.ndarray,
    count: int,
    rng: np.random.Generator,
    *,
    keep_per_class: int = 0,
    at_least_one_each: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``count`` of ``indices`` at random, stratified by ``labels[indices]``.

    Returns (taken, rest), both sorted. With ``at_least_one_each`` every class present
    gets at least one taken sample, and ``keep_per_class`` samples of each class always
    stay in ``rest`` (so later splits can be stratified too).
    """
    subset_labels = labels[indices]
    classes, class_sizes = np.unique(subset_labels, return_counts=True)
    minimum = np.full(len(classes), 1 if at_least_one_each else 0)
    maximum = np.maximum(class_sizes - keep_per_class, 0)
    minimum = np.minimum(minimum, maximum)
    per_class = allocate_per_class(class_sizes, count, minimum, maximum)
    taken: list[np.ndarray] = []
    for label, class_count in zip(classes, per_class):
        members = indices[subset_labels == label]
        taken.append(rng.permutation(members)[:class_count])
    taken_indices = np.sort(np.concatenate(taken)) if taken else np.empty(0, dtype=np.int64)
    rest = np.setdiff1d(indices, taken_indices, assume_unique=True)
    return taken_indices, rest


def three_way_split(
    labels: np.ndarray, holdout_size: int | float, validation_size: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified (train, holdout, validation) indices.

    ``validation_size`` is a fraction of all samples; ``holdout_size`` a count or a
    fraction of what remains. Every class is represented in every split.
    """
    check_fraction("validation_size", validation_size)
    rng = np.random.default_rng(seed)
    all_indices = np.arange(len(labels))
    validation_count = split_count("validation_size", validation_size, len(labels))
    validation, rest = stratified_take(all_indices, labels, validation_count, rng, keep_per_class=2)
    holdout_count = split_count("holdout_size", holdout_size, len(rest))
    holdout, train = stratified_take(rest, labels, holdout_count, rng, keep_per_class=1)
    return train, holdout, validation


def cap_train_indices(train: np.ndarray, labels: np.ndarray, limit_train: int | None, seed: int) -> np.ndarray:
    """Keep a stratified, seed-chosen subset of at most ``limit_train`` train indices."""
    if limit_train is None or limit_train >= len(train):
        return train
    rng = np.random.default_rng([seed, limit_train])  # independent of the split draws
    kept, _ = stratified_take(train, labels, limit_train, rng, at_least_one_each=False)
    return kept
