"""Figures shared by the chapters: image grids, learning curves, confusion matrices."""
from __future__ import annotations

from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch


def show_image(ax: plt.Axes, image: torch.Tensor, title: str | None = None) -> None:
    """Draw one (C, H, W) image in [0, 1]; single-channel images in grey."""
    array = image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
    if array.shape[2] == 1:
        ax.imshow(array[:, :, 0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(array)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def class_grid(images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], per_class: int = 8
               ) -> plt.Figure:
    """A row of ``per_class`` examples for every class."""
    fig, axes = plt.subplots(len(classes), per_class, figsize=(per_class * 0.6 + 0.8, len(classes) * 0.62))
    for row, name in enumerate(classes):
        index = (labels == row).nonzero().flatten()[:per_class]
        for col in range(per_class):
            ax = axes[row, col]
            if col < len(index):
                show_image(ax, images[index[col]].float() / (255 if images.dtype == torch.uint8 else 1))
            else:
                ax.axis("off")
            if col == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout(pad=0.2)
    return fig


def learning_curves(history: Sequence[dict[str, Any]], panels: dict[str, Sequence[str]]) -> plt.Figure:
    """One panel per entry of ``panels`` (title → history keys), epochs on the x-axis."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    epochs = [record["epoch"] for record in history]
    for ax, (title, keys) in zip(axes[0], panels.items()):
        for key in keys:
            ax.plot(epochs, [record[key] for record in history], marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def confusion_heatmap(confusion: torch.Tensor, classes: Sequence[str], normalize: bool = True) -> plt.Figure:
    """Confusion matrix (rows: true class, columns: predicted), as row-normalised percentages."""
    import seaborn as sns

    matrix = confusion.float().numpy()
    if normalize:
        matrix = 100 * matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7, 5.8))
    sns.heatmap(matrix, annot=True, fmt=".0f", cmap="Blues", xticklabels=classes, yticklabels=classes,
                cbar_kws={"label": "% of the true class"}, ax=ax)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    return fig
