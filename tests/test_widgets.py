"""The chapter-2 explorer, driven for real: a Jupyter kernel builds it, the widgets' values change as a
reader's clicks would change them, and what it displays changes with them."""
from __future__ import annotations

import re

import pytest

DRIVE = """
import torch
from advlib import models
from advlib.widgets import attack_explorer

torch.manual_seed(0)
model = models.build("small_cnn", 3, 1, width=2).eval()
x, y = torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 2, 0])
explorer = attack_explorer(model, x, y, ["cat", "dog", "owl"])
print("STATUS", explorer.status.value)
explorer.eps_slider.value = 0
print("STATUS", explorer.status.value)
explorer.attack_menu.value = "PGD"
explorer.eps_slider.value = 32
print("STATUS", explorer.status.value)
explorer.index.value = 2
print("STATUS", explorer.status.value)
"""


@pytest.mark.slow
def test_the_explorer_follows_its_widgets_in_a_live_kernel():
    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(kernel_name="python3")
    lines, figures = [], []

    def collect(message):
        content = message["content"]
        if message["msg_type"] == "stream":
            lines.extend(content["text"].splitlines())
        elif message["msg_type"] == "display_data" and "image/png" in content["data"]:
            figures.append(content["data"]["image/png"])
        elif message["msg_type"] == "error":
            lines.append("ERROR " + content["ename"] + ": " + content["evalue"])

    try:
        reply = client.execute_interactive(DRIVE, timeout=180, output_hook=collect)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    assert reply["content"]["status"] == "ok", lines
    statuses = [line.removeprefix("STATUS ") for line in lines if line.startswith("STATUS ")]
    assert len(statuses) == 4
    first, clean, pgd, other_image = statuses
    assert first.startswith("FGSM, ε = 8/255") and "‖δ‖∞ = 8.0/255" in first
    assert clean.startswith("FGSM, ε = 0/255") and "‖δ‖∞ = 0.0/255" in clean
    assert pgd.startswith("PGD, ε = 32/255") and re.search(r"‖δ‖∞ = (3[01]\.\d|32\.0)/255", pgd)
    assert "true owl" in other_image and "true cat" in pgd
    assert len(figures) >= 4 and len(set(figures)) >= 3, "one new figure per change"
