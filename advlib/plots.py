"""Figures shared by the chapters: image grids, learning curves, confusion matrices; each section
names the chapter that introduces it."""
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
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def compare_curves(histories: dict[str, Sequence[dict[str, Any]]], panels: dict[str, str]) -> plt.Figure:
    """Several trainings side by side (chapters 6-9): one panel per entry of ``panels`` (history key →
    title), one line per entry of ``histories`` (label → per-epoch history), epochs on the x-axis."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels.items()):
        for label, history in histories.items():
            ax.plot([r["epoch"] for r in history], [r.get(key, float("nan")) for r in history], marker="o", ms=3,
                    label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def rows_scatter(rows: Sequence[dict[str, Any]], x: str, y: str, xlabel: str, ylabel: str,
                 reference: tuple[str, float] | None = None) -> plt.Figure:
    """One point per results row (``method``), ``x`` against ``y`` in %, with error bars where the row
    has 95 % intervals (``<column>_ci95``); ``reference`` draws a labelled horizontal line (e.g. the
    teacher's robust accuracy)."""
    def bar(row: dict[str, Any], column: str) -> list[list[float]] | None:
        interval = row.get(f"{column}_ci95")
        if interval is None:
            return None
        return [[100 * (row[column] - interval[0])], [100 * (interval[1] - row[column])]]

    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    for row in rows:
        ax.errorbar(100 * row[x], 100 * row[y], xerr=bar(row, x), yerr=bar(row, y), fmt="o", markersize=7,
                    capsize=3, label=row["method"])
    if reference is not None:
        ax.axhline(100 * reference[1], color="grey", ls="--", lw=1, label=reference[0])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    ax.grid(alpha=0.3)
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


def nothing_to_show(reason: str) -> plt.Figure:
    """A small figure that says why it is empty (e.g. no image was fooled), where a grid of images
    would have had no rows."""
    fig, ax = plt.subplots(figsize=(5.4, 0.6))
    ax.axis("off")
    ax.text(0.5, 0.5, reason, ha="center", va="center", fontsize=9, color="grey")
    return fig


def image_rows(rows: dict[str, torch.Tensor], titles: Sequence[str] | None = None) -> plt.Figure:
    """One row of images per entry of ``rows`` (label → (N, C, H, W) batch), e.g. the purification
    paper's Figure 5: original, adversarial and purified images."""
    n = min(len(images) for images in rows.values())
    if n == 0:
        return nothing_to_show("no images to show")
    fig, axes = plt.subplots(len(rows), n, figsize=(n * 0.85 + 1.2, len(rows) * 0.95), squeeze=False)
    for r, (label, images) in enumerate(rows.items()):
        for c in range(n):
            show_image(axes[r, c], images[c], titles[c] if titles is not None and r == 0 else None)
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout(pad=0.2)
    return fig


def autoencoder_diagram(net: torch.nn.Module) -> plt.Figure:
    """The convolutional autoencoder as a strip of blocks: encoder (Conv-BN-ReLU) left, decoder
    (ConvT-BN-ReLU) right, arcs for the additive skip connections (``advlib.models.autoencoder``)."""
    blocks = net.blocks
    fig, ax = plt.subplots(figsize=(max(6.0, 0.42 * (2 * blocks + 2)), 2.6))
    x_of = {("in", 0): 0.0}
    for k in range(1, blocks + 1):
        x_of[("enc", k)] = k
        x_of[("dec", k)] = blocks + k
    for (side, k), x in x_of.items():
        if side == "in":
            ax.add_patch(plt.Rectangle((x - 0.35, 0), 0.7, 1, color="0.85"))
            ax.text(x, 0.5, "x", ha="center", va="center", fontsize=9)
            continue
        color = "tab:blue" if side == "enc" else "tab:gray"
        ax.add_patch(plt.Rectangle((x - 0.35, 0), 0.7, 1, color=color, alpha=0.8))
        ax.text(x, -0.25, str(k), ha="center", va="top", fontsize=7)
    ax.add_patch(plt.Rectangle((2 * blocks + 0.65, 0), 0.7, 1, color="tab:orange"))
    ax.text(2 * blocks + 1, 0.5, "tanh", ha="center", va="center", fontsize=7, rotation=90)
    for k in range(1, blocks + 1):
        source = net.skip_source(k)
        if source is None:
            continue
        start, end = x_of[("in", 0)] if source == 0 else x_of[("enc", source)], x_of[("dec", k)]
        height = 1.15 + 1.2 * (end - start) / (2 * blocks)  # wider skips drawn higher, so none overlap
        ax.plot([start, start, end, end], [1.0, height, height, 1.0], color="tab:green", lw=1.2)
        ax.plot(end, 1.02, marker="v", color="tab:green", markersize=4)
    ax.set_xlim(-0.8, 2 * blocks + 1.8)
    ax.set_ylim(-0.7, 2.6)
    ax.axis("off")
    ax.set_title(f"encoder: {blocks} × Conv-BN-ReLU (blue) | decoder: {blocks} × ConvT-BN-ReLU (grey) | "
                 "skips (green)", fontsize=9)
    fig.tight_layout()
    return fig


# --- adversarial examples (chapter 02) -------------------------------------------------------------------------

def _predictions(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted class, its softmax probability) per image, float32, in eval mode."""
    from .evaluation import predict

    probabilities = predict(model, x).softmax(1).cpu()
    confidence, predicted = probabilities.max(1)
    return predicted, confidence


def _show_perturbation(ax: plt.Axes, delta: torch.Tensor, amplify: float, title: str) -> None:
    # Grey is "no change"; ×amplify makes an 8/255 perturbation visible (0.5 ± 0.31).
    show_image(ax, (0.5 + amplify * delta).clamp(0, 1), title)


def triptych(model: torch.nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor,
             classes: Sequence[str], amplify: float = 10.0, title: str | None = None) -> plt.Figure:
    """One row per image: the clean image, the adversarial image (each titled with the model's
    prediction and confidence, red when wrong) and the perturbation ×``amplify`` around grey."""
    if len(x) == 0:
        return nothing_to_show(f"{title or 'this attack'}: no image to show (none was fooled)")
    clean_pred, clean_conf = _predictions(model, x)
    adv_pred, adv_conf = _predictions(model, x_adv)
    y = y.cpu()
    fig, axes = plt.subplots(len(x), 3, figsize=(5.4, 1.95 * len(x)), squeeze=False)
    for row in range(len(x)):
        delta = (x_adv[row] - x[row]).detach().cpu()
        for col, (image, pred, conf) in enumerate([(x[row], clean_pred[row], clean_conf[row]),
                                                   (x_adv[row], adv_pred[row], adv_conf[row])]):
            ax = axes[row, col]
            show_image(ax, image.cpu(), f"{'clean' if col == 0 else 'adversarial'}: {classes[pred]}\n"
                                        f"({100 * conf:.0f} %)")
            ax.title.set_color("black" if pred == y[row] else "red")
        linf, l2 = delta.abs().max().item(), delta.norm().item()
        _show_perturbation(axes[row, 2], delta, amplify,
                           f"δ ×{amplify:g}\n‖δ‖∞ = {255 * linf:.1f}/255, ‖δ‖₂ = {l2:.2f}")
        axes[row, 0].set_ylabel(f"true: {classes[y[row]]}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def accuracy_vs_eps(curves: dict[str, dict[float, float]], clean_accuracy: float | None = None,
                    title: str | None = None, scale: float = 255.0, xlabel: str = "ε (×1/255)") -> plt.Figure:
    """Accuracy (%) against the budget, one line per attack; ``curves`` maps an attack's name to
    ``{eps: accuracy}`` with accuracies as fractions. Budgets are shown multiplied by ``scale``
    (L∞ budgets in grey levels by default; ``scale=1`` for L2 radii)."""
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    for name, points in curves.items():
        eps_values = sorted(points)
        ax.plot([scale * e for e in eps_values], [100 * points[e] for e in eps_values], marker="o", label=name)
    if clean_accuracy is not None:
        ax.axhline(100 * clean_accuracy, color="grey", linestyle="--", linewidth=1, label="clean")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def eps_sweep_grid(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, classes: Sequence[str],
                   attacks: dict[str, Any], eps_values: Sequence[float]) -> plt.Figure:
    """The image of ``x`` (N, C, H, W) that ``model`` classifies most confidently, attacked at every ε
    in ``eps_values`` (columns) by every attack (rows), each cell titled with the prediction (red
    when wrong). ``attacks`` maps a row name to a function of ε that returns an attack, e.g.
    ``{"PGD": lambda eps: build("pgd", eps=eps)}``."""
    if len(x) == 0:
        return nothing_to_show("no correctly classified image to attack")
    most_confident = _predictions(model, x)[1].argmax().item()
    x, y = x[most_confident:most_confident + 1], y[most_confident:most_confident + 1]
    fig, axes = plt.subplots(len(attacks), len(eps_values), squeeze=False,
                             figsize=(1.35 * len(eps_values) + 0.6, 1.55 * len(attacks)))
    for row, (name, make_attack) in enumerate(attacks.items()):
        for col, eps in enumerate(eps_values):
            x_adv = make_attack(eps)(model, x, y) if eps > 0 else x
            pred, conf = _predictions(model, x_adv)
            ax = axes[row, col]
            show_image(ax, x_adv[0].cpu(), f"ε={255 * eps:g}/255\n{classes[pred[0]]} ({100 * conf[0]:.0f} %)")
            ax.title.set_color("black" if pred[0] == y[0].item() else "red")
            if col == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.suptitle(f"true class: {classes[y[0].item()]}", fontsize=9)
    fig.tight_layout()
    return fig


# --- SAAD (chapter 07) -----------------------------------------------------------------------------------

def saad_weights(history: Sequence[dict[str, Any]], weights: torch.Tensor, transferable: torch.Tensor,
                 batch_size: int) -> plt.Figure:
    """Left: the mean weight w of SAAD's training examples per epoch, for those that fool the teacher
    and those it still gets right (the trainer's epoch statistics). Right: the weights of a trained
    student on test images, split the same way (weights are relative to their batch)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    epochs = [r["epoch"] for r in history]
    axes[0].plot(epochs, [r["weight_fooling_teacher"] for r in history], marker="o", label="x' fools the teacher")
    axes[0].plot(epochs, [r["weight_teacher_correct"] for r in history], marker="o",
                 label="the teacher is still right on x'")
    axes[0].set_title("mean weight w of SAAD's training examples", fontsize=10)
    axes[0].set_xlabel("epoch")
    axes[0].xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    bins = torch.linspace(0, float(weights.max()) + 1e-6 if len(weights) else 1.0, 25).tolist()
    axes[1].hist(weights[transferable].tolist(), bins=bins, alpha=0.6, label="fools the teacher")
    axes[1].hist(weights[~transferable].tolist(), bins=bins, alpha=0.6, label="does not")
    axes[1].set_title(f"weights w of the trained student\n({len(weights)} test images, batches of {batch_size})",
                      fontsize=10)
    axes[1].set_xlabel("w")
    axes[1].set_ylabel("images")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# --- the leaderboard (chapter 09) -----------------------------------------------------------------------

def leaderboard_scatter(rows: Sequence[dict[str, Any]], eps: float) -> plt.Figure:
    """Clean against AutoAttack accuracy (%) for the leaderboard's rows at ``eps``, with their 95 %
    intervals as error bars; the purifier's threat models share one colour."""
    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    for row in (r for r in rows if abs(r["eps"] - eps) < 1e-12):
        clean, robust = 100 * row["clean"], 100 * row["autoattack"]
        xerr = [[clean - 100 * row["clean_ci95"][0]], [100 * row["clean_ci95"][1] - clean]]
        yerr = [[robust - 100 * row["autoattack_ci95"][0]], [100 * row["autoattack_ci95"][1] - robust]]
        label = row["defense"] if row["threat"] == "white-box" else f"{row['defense']}, {row['threat']}"
        ax.errorbar(clean, robust, xerr=xerr, yerr=yerr, fmt="o", ms=5, capsize=2, label=label,
                    color="black" if row["defense"].startswith("purifier") else None,
                    alpha=1.0 if row["threat"] == "white-box" else 0.45)
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel("AutoAttack accuracy (%)")
    ax.set_title(f"ε = {255 * eps:.3g}/255", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    return fig
