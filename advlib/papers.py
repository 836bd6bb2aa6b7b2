"""Every published number the book quotes, in one place, each with its source.

Accuracies are in % as printed in the papers; the book's own results are fractions in [0, 1].
"""
from __future__ import annotations

# Koo et al. 2023, Sec. 4: the clean test accuracy of their ResNet56 on CIFAR-10, in %.
PURIFICATION_CLASSIFIER_CLEAN = {"cifar10": 89.46}

# Koo et al. 2023, Table 1 (CIFAR-10, ResNet56 at 89.46 % clean), accuracy in %.
PURIFICATION_TABLE1: dict[str, dict[str, float]] = {
    "Original": {"ours": 89.46, "NRP": 89.46, "SOAP": 89.46},
    "PGD8": {"ours": 40.20, "NRP": 35.07, "SOAP": 39.14},
    "PGD16": {"ours": 33.57, "NRP": 35.57, "SOAP": 35.65},
    "FGSM": {"ours": 40.12, "NRP": 39.79, "SOAP": 37.43},
    "BIM": {"ours": 38.37, "NRP": 31.96, "SOAP": 40.18},
    "CW": {"ours": 56.87, "NRP": 57.24, "SOAP": 79.22},
    "AA": {"ours": 46.91, "NRP": 12.34, "SOAP": 41.03},
}

# Koo et al. 2023, Table 2 (ablation), accuracy in %. Rows as in the paper, top to bottom.
PURIFICATION_TABLE2: dict[str, dict[str, float]] = {
    "AT teacher, no KD": {"PGD8": 34.16, "PGD16": 28.01, "FGSM": 38.07, "BIM": 33.29, "CW": 56.54, "AA": 43.20},
    "KD from AT": {"PGD8": 35.46, "PGD16": 28.70, "FGSM": 38.42, "BIM": 34.92, "CW": 56.32, "AA": 42.77},
    "KD from NT": {"PGD8": 35.77, "PGD16": 29.47, "FGSM": 36.93, "BIM": 34.88, "CW": 57.90, "AA": 40.50},
    "KD from AT and NT": {"PGD8": 40.20, "PGD16": 33.57, "FGSM": 40.12, "BIM": 38.37, "CW": 56.87, "AA": 46.91},
}


DYNAT_COLUMNS = ("clean", "PGD-10", "PGD-20", "PGD-50", "CW", "AA")

# Seed 002, Table 1 (CIFAR-10, WRN-34-10 target, ResNet-18 guide), accuracy in %, as published.
DYNAT_TABLE1: dict[str, dict[str, float]] = {name: dict(zip(DYNAT_COLUMNS, row)) for name, row in {
    "PGD-AT": (85.17, 56.07, 55.08, 54.88, 53.91, 51.69),
    "TRADES": (85.72, 56.75, 56.1, 55.9, 53.87, 53.40),
    "MART": (84.17, 58.98, 58.56, 58.06, 54.58, 51.10),
    "FAT": (87.97, 50.31, 49.86, 48.79, 48.65, 47.48),
    "GAIRAT": (86.30, 60.64, 59.54, 58.74, 45.57, 40.30),
    "AWP": (85.57, 58.92, 58.13, 57.92, 56.03, 53.90),
    "LBGAT": (88.22, 56.25, 54.66, 54.3, 54.29, 52.20),
    "DYNAT": (89.16, 52.88, 51.78, 51.49, 50.88, 49.20),
    "DYNAT-AWP (β = 0)": (90.27, 55.49, 54.49, 54.30, 53.28, 52.10),
    "DYNAT-AWP (β = 1)": (88.41, 58.39, 57.71, 57.53, 55.48, 54.10),
    "DYNAT-Inner-AWP (β = 1)": (86.21, 59.08, 58.22, 58.02, 56.24, 55.30),
}.items()}

# Seed 002, Table 2 (CIFAR-100, same architectures), accuracy in %, as published.
DYNAT_TABLE2: dict[str, dict[str, float]] = {name: dict(zip(DYNAT_COLUMNS, row)) for name, row in {
    "PGD-AT": (60.89, 32.19, 31.69, 31.45, 30.1, 27.86),
    "TRADES": (58.61, 29.20, 28.66, 28.56, 27.05, 25.94),
    "SAT": (62.82, 28.1, 27.17, 26.76, 27.32, 24.57),
    "AWP": (60.38, 34.13, 33.86, 33.65, 31.12, 28.86),
    "LBGAT": (60.64, 35.13, 34.75, 34.62, 30.65, 29.33),
    "DYNAT": (67.25, 28.03, 26.97, 26.81, 26.62, 24.10),
    "DYNAT-AWP (β = 1)": (62.29, 35.45, 35.09, 34.92, 31.50, 30.20),
    "DYNAT-Inner-AWP (β = 1)": (58.87, 35.61, 35.09, 35.05, 32.10, 29.70),
}.items()}

# Seed 002, Table 3 (CIFAR-10, GAIRAT's training), accuracy in %, as published: the rows with a
# WRN-34-10 target (and a ResNet-18 guide), then the "(small target)" rows, with a ResNet-18 target
# (and a WRN-34-10 guide): the table's first column names the target.
DYNAT_TABLE3_COLUMNS = ("clean", "PGD-20", "CW", "AA")
DYNAT_TABLE3: dict[str, dict[str, float]] = {name: dict(zip(DYNAT_TABLE3_COLUMNS, row)) for name, row in {
    "GAIRAT": (86.30, 59.54, 45.57, 40.30),
    "DYNAT-Inner-GAIRAT": (87.25, 60.20, 45.78, 42.60),
    "GAIRAT (small target)": (82.27, 60.07, 37.82, 35.70),
    "DYNAT-Inner-GAIRAT (small target)": (82.32, 62.30, 38.73, 37.90),
}.items()}

# Seed 002, Table 4 (CIFAR-10, MAIL's training; ResNet-18 target, WRN-34-10 guide), accuracy in %, as
# published. Its "MAIL (MSE)" row is left out: neither MAIL's paper nor its authors' code has an MSE
# variant, so the book cannot say what that row trained.
DYNAT_TABLE4_COLUMNS = ("clean", "PGD-100", "APGD", "CW", "AA")
DYNAT_TABLE4: dict[str, dict[str, float]] = {name: dict(zip(DYNAT_TABLE4_COLUMNS, row)) for name, row in {
    "PGD-AT": (84.86, 48.91, 47.70, 51.61, 44.90),
    "TRADES": (84.00, 52.66, 52.37, 52.30, 48.10),
    "MART": (82.28, 53.50, 52.73, 51.59, 48.40),
    "FAT": (87.97, 46.78, 46.68, 49.92, 43.90),
    "AWP": (85.17, 52.63, 50.40, 51.39, 47.00),
    "GAIRAT": (83.22, 54.81, 50.95, 39.86, 33.35),
    "MAIL": (84.52, 55.25, 53.20, 48.88, 44.22),
    "DYNAT-AT-MAIL": (83.71, 52.49, 52.40, 52.13, 49.00),
    "DYNAT-MAIL-Inner": (82.30, 53.02, 52.80, 52.57, 49.90),
}.items()}

# The paper's table for each dataset it reports on.
DYNAT_TABLES = {"cifar10": ("Table 1", DYNAT_TABLE1), "cifar100": ("Table 2", DYNAT_TABLE2)}
