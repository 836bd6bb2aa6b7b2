"""Interactive explorers for JupyterLab and Colab (ipywidgets); nothing is built at import time.

The rendered book cannot run them: each chapter follows a widget with a static figure of the same
content (e.g. :func:`advlib.plots.eps_sweep_grid`).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

# ε-bounded attacks take the slider's ε; CW minimises L2 instead and ignores it.
DEFAULT_ATTACKS: dict[str, Callable[[float], Any]] = {
    "FGSM": lambda eps: _build("fgsm", eps=eps),
    "BIM": lambda eps: _build("bim", eps=eps, alpha=eps / 4, steps=10),
    "PGD": lambda eps: _build("pgd", eps=eps, alpha=eps / 4, steps=20),
    "CW-L2 (ignores ε)": lambda eps: _build("cw", c=1.0, steps=100, lr=0.01),
}


def _build(name: str, **params: Any) -> Any:
    from .attacks import build

    return build(name, **params)


def attack_explorer(model: nn.Module, x: torch.Tensor, y: torch.Tensor, classes: Sequence[str],
                    attacks: dict[str, Callable[[float], Any]] | None = None, max_eps: int = 32) -> Any:
    """An ε slider (in /255), an attack menu and an image index: shows the clean image, the
    adversarial one and the perturbation ×10, with the model's predictions and confidences, and a
    status line that says the same in words (chapter 2).

    ``x``: images in [0, 1] (N, C, H, W) on the model's device; ``attacks`` maps a menu entry to a
    function of ε returning an attack (default: FGSM, BIM, PGD, CW). Results are cached, so going
    back to a setting is instant; ε = 0 shows the clean image. Returns the widget (display it, or
    leave it last in a cell); its ``eps_slider``, ``attack_menu``, ``index``, ``status`` and
    ``output`` are the parts.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    from .evaluation import predict
    from .plots import triptych

    attacks = attacks or DEFAULT_ATTACKS
    eps_slider = widgets.IntSlider(value=8, min=0, max=max_eps, step=1, description="ε (/255)",
                                   continuous_update=False)
    attack_menu = widgets.Dropdown(options=list(attacks), description="attack")
    index = widgets.BoundedIntText(value=0, min=0, max=len(x) - 1, description="image")
    status = widgets.Label()
    output = widgets.Output()
    computed: dict[tuple[str, int, int], torch.Tensor] = {}

    def redraw(_: Any = None) -> None:
        key = (attack_menu.value, eps_slider.value, index.value)
        image, label = x[index.value:index.value + 1], y[index.value:index.value + 1]
        if key not in computed:
            eps = eps_slider.value / 255
            computed[key] = attacks[attack_menu.value](eps)(model, image, label) if eps > 0 else image
        probabilities = predict(model, computed[key]).softmax(1)[0]
        delta = (computed[key] - image).abs().max().item()
        status.value = (f"{attack_menu.value}, ε = {eps_slider.value}/255: predicted "
                        f"{classes[int(probabilities.argmax())]} ({100 * probabilities.max():.0f} %), "
                        f"true {classes[int(label)]}, ‖δ‖∞ = {255 * delta:.1f}/255")
        with output:
            output.clear_output(wait=True)
            fig = triptych(model, image, computed[key], label, classes,
                           title=f"{attack_menu.value}, ε = {eps_slider.value}/255")
            display(fig)
            plt.close(fig)

    for control in (eps_slider, attack_menu, index):
        control.observe(redraw, names="value")
    explorer = widgets.VBox([widgets.HBox([attack_menu, eps_slider, index]), status, output])
    explorer.eps_slider, explorer.attack_menu, explorer.index = eps_slider, attack_menu, index
    explorer.status, explorer.output = status, output
    redraw()
    return explorer
