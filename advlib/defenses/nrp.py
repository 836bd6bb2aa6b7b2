"""NRP, the Neural Representation Purifier (Naseer, Khan, Hayat, Khan & Porikli, CVPR 2020, "A
self-supervised approach for adversarial robustness"), as a purifier in front of a fixed
classifier (chapter 5's Table 1 baseline, chapters 10-11's adaptive evaluation).

Training needs no labels (Sec. 3, Alg. 1). The self-supervised perturbation (SSP) x' of a clean image
x maximises the feature distortion Δ(x, x') = ‖F(x) − F(x')‖ of a fixed feature extractor F within
‖x' − x‖∞ ≤ ε; the purifier P_θ learns to map x' back, minimising

    L_P = α·L_adv + γ·L_img + λ·L_feat,   L_adv = −log σ(C(P(x')) − C(x)),
    L_img = ‖P(x') − x‖²,   L_feat = Δ(x, P(x')),

while a critic C_φ learns to tell x from P(x') (the relativistic GAN term, −log σ(C(x) − C(P(x')))).
At test time NRP is one forward pass. P is the authors' released ``NRP`` network: ESRGAN's
residual-in-residual dense blocks (RRDB) at full resolution, with no upsampling and no output
activation.

The authors released the network, its weights and SSP as an attack script, but no training code;
their answer to where it is points to BasicSR's ESRGAN trainer. So what the released code fixes is
followed: F is VGG-16 up to relu3_3 (``features[:16]``) on ImageNet-normalised images, Δ is the
mean squared difference of those features, SSP takes sign steps of 0.01 within ε = 16/255. SSP here
starts from uniform noise in the ε-ball (at x' = x the gradient of Δ is zero); the released script
starts from pure N(0, 1) noise, which its first projection puts at a corner of the ball for almost
every pixel. The weights α = 5·10⁻³, γ = 10⁻², λ = 1 and Adam (lr 10⁻⁴, betas 0.9, 0.99) are
ESRGAN's, which NRP's trainer is built on. The critic's architecture is not published; ours is a
VGG-style stack of strided convolutions. P's output is clamped to [0, 1] at test time only (the
released ``purify.py`` clamps when it saves an image).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.primitives import check_eps, check_step_settings, input_gradient, project_linf, uniform_start
from ..models import Normalize
from . import DEFENSES, frozen
from .adversarial_training import EpochSeeded

# ESRGAN's residual scaling of every dense block and of every RRDB
RESIDUAL_SCALE = 0.2
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
VGG16_RELU3_3 = 16  # torchvision's vgg16().features[:16] ends with relu3_3, as the released ssp.py


class ResidualDenseBlock(nn.Module):
    """Five 3×3 convolutions, each seeing the block's input and every earlier output (dense
    connections, ``growth`` channels each), LeakyReLU(0.2) after the first four; the output is
    ``input + 0.2·conv5`` (ESRGAN's ResidualDenseBlock_5C)."""

    def __init__(self, channels: int, growth: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channels + k * growth, growth if k < 4 else channels, 3, padding=1)
                                   for k in range(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for conv in self.convs[:-1]:
            features.append(F.leaky_relu(conv(torch.cat(features, 1)), 0.2))
        return x + RESIDUAL_SCALE * self.convs[-1](torch.cat(features, 1))


class RRDB(nn.Module):
    """Residual in residual dense block: three dense blocks, ``input + 0.2·blocks(input)``."""

    def __init__(self, channels: int, growth: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(ResidualDenseBlock(channels, growth) for _ in range(3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + RESIDUAL_SCALE * self.blocks(x)


class NRPNetwork(nn.Module):
    """The purifier P_θ: a 3×3 convolution to ``channels``, ``blocks`` RRDBs, a 3×3 convolution back
    to the image's channels (the released ``NRP(3, 3, 64, 23)``, growth 32: 16.55 M parameters).
    Fully convolutional, any image size. ``restore`` is the raw output, which training uses (a clamp
    would give pixels outside [0, 1] no gradient back); ``forward`` clamps it to [0, 1] for the
    classifier behind it."""

    def __init__(self, in_channels: int = 3, channels: int = 64, blocks: int = 23, growth: int = 32) -> None:
        super().__init__()
        if min(in_channels, channels, blocks, growth) < 1:
            raise ValueError(f"in_channels, channels, blocks and growth must be ≥ 1, got "
                             f"{in_channels}, {channels}, {blocks}, {growth}")
        self.first = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.trunk = nn.Sequential(*(RRDB(channels, growth) for _ in range(blocks)))
        self.last = nn.Conv2d(channels, in_channels, 3, padding=1)

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.trunk(self.first(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.restore(x).clamp(0, 1)


class Critic(nn.Module):
    """C_φ: one realness logit per image. Stages of a 3×3 convolution and a strided 4×4 one with
    LeakyReLU(0.2), channels doubling from ``width``, then global average pooling and two linear
    layers (the VGG-style discriminator of ESRGAN, without BatchNorm and for any image size)."""

    def __init__(self, in_channels: int = 3, width: int = 64, stages: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for stage in range(stages):
            out = width * 2 ** stage
            layers += [nn.Conv2d(channels, out, 3, padding=1), nn.LeakyReLU(0.2),
                       nn.Conv2d(out, out, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(channels, 100), nn.LeakyReLU(0.2), nn.Linear(100, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3))).squeeze(1)


class NRPTraining(nn.Module):
    """What NRP's training updates, as one module: the purifier and its critic, so that both are
    checkpointed and resumed together. ``forward`` is the purifier's."""

    def __init__(self, purifier: NRPNetwork, critic: Critic) -> None:
        super().__init__()
        self.purifier, self.critic = purifier, critic

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.purifier(x)


def feature_distortion(features: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Δ = the mean squared difference of two images' features, one value per image (the released
    ssp.py's ``MSELoss`` on VGG-16 relu3_3 features, per image)."""
    return (features - reference).pow(2).flatten(1).mean(1)


def self_supervised_perturbation(extractor: nn.Module, x: torch.Tensor, eps: float, step_size: float, steps: int,
                                 generator: torch.Generator | None = None,
                                 reference: torch.Tensor | None = None) -> torch.Tensor:
    """SSP (Sec. 3): x' maximising Δ(F(x), F(x')) by ``steps`` sign-gradient steps of
    ``step_size`` from a uniform start in the ε-ball, each projected onto the ball and [0, 1]:
    x'ₜ₊₁ = Π(x'ₜ + step·sign(∇Δ)). It needs neither labels nor the classifier to be defended.
    ``reference`` is F(x) where the caller has it already."""
    check_eps(eps)
    check_step_settings(step_size, steps)
    x = x.detach()
    if reference is None:
        with torch.no_grad():
            reference = extractor(x)
    perturbed = uniform_start(x, eps, generator)
    for _ in range(steps):
        gradient = input_gradient(lambda images: feature_distortion(extractor(images), reference).sum(), perturbed)
        perturbed = project_linf(perturbed + step_size * gradient.sign(), x, eps)
    return perturbed


def relativistic_generator_loss(purified_realness: torch.Tensor, clean_realness: torch.Tensor) -> torch.Tensor:
    """L_adv = −log σ(C(P(x')) − C(x)), averaged over the batch: the purifier is rewarded for images
    the critic finds more real than the clean ones. −log σ(z) = softplus(−z), computed stably."""
    return F.softplus(clean_realness - purified_realness).mean()


def relativistic_critic_loss(clean_realness: torch.Tensor, purified_realness: torch.Tensor) -> torch.Tensor:
    """The critic's side: −log σ(C(x) − C(P(x'))), averaged over the batch."""
    return F.softplus(purified_realness - clean_realness).mean()


@DEFENSES.register("nrp")
class NRPTrainingLoss(EpochSeeded):
    """One step of Alg. 1 on a batch of clean images x (labels unused): SSP examples x' on the frozen
    ``extractor``, the purifier's loss L_P = α·L_adv + γ·L_img + λ·L_feat, and the critic's relativistic
    loss on x and P(x'), returned as their sum. The sum has the gradients of the two alternating
    updates: L_adv reaches the purifier through C with C's weights held fixed, and the critic's loss
    sees P(x') detached, as in ESRGAN's trainer, whose critic step sees the images of the purifier's
    step. With Adam (per-parameter) one optimiser over both equals two with the same settings.
    Returns no logits: there is no classifier in NRP's training."""

    def __init__(self, extractor: nn.Module, eps: float = 16 / 255, step_size: float = 0.01, steps: int = 1,
                 adversarial_weight: float = 5e-3, pixel_weight: float = 1e-2, feature_weight: float = 1.0,
                 seed: int = 0) -> None:
        if min(adversarial_weight, pixel_weight, feature_weight) < 0:
            raise ValueError("NRP's loss weights must be ≥ 0, got "
                             f"{adversarial_weight}, {pixel_weight}, {feature_weight}")
        check_eps(eps)
        check_step_settings(step_size, steps)
        super().__init__(seed)
        self.extractor = frozen(extractor)
        self.eps, self.step_size, self.steps = eps, step_size, steps
        self.adversarial_weight, self.pixel_weight, self.feature_weight = adversarial_weight, pixel_weight, feature_weight
        self._terms: dict[str, torch.Tensor] = {}  # summed on the device, read once per epoch
        self._batches = 0

    def __call__(self, model: NRPTraining, x: torch.Tensor, y: torch.Tensor, epoch: int
                 ) -> tuple[torch.Tensor, None]:
        with torch.no_grad():
            clean_features = self.extractor(x)
        perturbed = self_supervised_perturbation(self.extractor, x, self.eps, self.step_size, self.steps,
                                                 self.generator(x.device, epoch), clean_features)
        purified = model.purifier.restore(perturbed)
        fixed_critic = {name: p.detach() for name, p in model.critic.named_parameters()}
        clean_realness = model.critic(x)
        purified_realness = torch.func.functional_call(model.critic, fixed_critic, (purified,))
        terms = {"adversarial": relativistic_generator_loss(purified_realness, clean_realness.detach()),
                 "pixel": F.mse_loss(purified, x),
                 "feature": feature_distortion(self.extractor(purified), clean_features).mean()}
        purifier_loss = (self.adversarial_weight * terms["adversarial"] + self.pixel_weight * terms["pixel"]
                         + self.feature_weight * terms["feature"])
        terms["critic"] = relativistic_critic_loss(clean_realness, model.critic(purified.detach()))
        self._record(terms)
        return purifier_loss + terms["critic"], None

    def _record(self, terms: dict[str, torch.Tensor]) -> None:
        for name, value in terms.items():
            self._terms[name] = self._terms.get(name, 0.0) + value.detach()
        self._batches += 1

    def epoch_statistics(self) -> dict[str, float]:
        """The epoch's mean of each term (``loss_adversarial``, ``loss_pixel``, ``loss_feature``,
        ``loss_critic``), for the training curves; the sums restart."""
        statistics = {f"loss_{name}": float(total) / max(1, self._batches) for name, total in self._terms.items()}
        self._terms, self._batches = {}, 0
        return statistics


def vgg16_relu3_3(weights_file: str | Path | None = None) -> nn.Module:
    """F of the paper profile: torchvision's VGG-16 ``features[:16]`` (to relu3_3) with its ImageNet
    weights, behind the ImageNet normalisation, for images in [0, 1]. The weights come from
    ``weights_file`` or torch's hub cache, where torchvision downloads them on first use (528 MB;
    only the ``features.*`` tensors of the first 16 layers are used, so a file holding only those
    serves too)."""
    from torchvision.models import VGG16_Weights

    layers = _vgg16_first_layers()
    url = VGG16_Weights.IMAGENET1K_V1.url
    path = Path(weights_file) if weights_file else vgg16_weights_path()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(path))
        except Exception as error:  # no network: say where the file goes
            raise FileNotFoundError(
                f"NRP's feature extractor needs VGG-16's ImageNet weights at {path}, which could not be "
                f"downloaded ({error}); copy {url.rsplit('/', 1)[1]} there from a machine with network "
                f"access, or set TORCH_HOME to a folder whose hub/checkpoints/ holds it") from error
    state = torch.load(path, map_location="cpu", weights_only=True)
    wanted = {name.removeprefix("features."): tensor for name, tensor in state.items()
              if name.startswith("features.") and int(name.split(".")[1]) < VGG16_RELU3_3}
    layers.load_state_dict(wanted)
    return frozen(nn.Sequential(Normalize(IMAGENET_MEAN, IMAGENET_STD), layers))


def features_up_to(classifier: nn.Module, stages: int) -> nn.Module:
    """F of the quick profile: a trained ``small_cnn`` classifier's normalisation and its first
    ``stages`` conv stages (conv, BatchNorm, ReLU, max-pool each), frozen."""
    normalize, net = classifier.normalize, classifier.net
    layers = list(net.children())[:4 * stages]
    if stages < 1 or len(layers) < 4 * stages or not isinstance(layers[0], nn.Conv2d):
        raise ValueError(f"features_up_to needs a small_cnn with at least {stages} conv stages")
    return frozen(nn.Sequential(normalize, *layers))


def _vgg16_first_layers() -> nn.Sequential:
    """torchvision's VGG-16 ``features[:16]``, built without the rest of the network (its classifier
    alone has 120 M parameters to initialise)."""
    from torchvision.models.vgg import cfgs, make_layers

    return make_layers(cfgs["D"])[:VGG16_RELU3_3]


def vgg16_weights_path() -> Path:
    """Where torchvision keeps VGG-16's ImageNet weights: torch's hub cache, ``$TORCH_HOME/hub/checkpoints``."""
    from torchvision.models import VGG16_Weights

    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1]


def write_stand_in_vgg16_weights(path: str | Path | None = None, seed: int = 0) -> Path:
    """Randomly initialised tensors of VGG-16's first 16 feature layers, saved (atomically) at ``path``
    (default :func:`vgg16_weights_path`) under the ImageNet file's key names: what CI's paper smoke
    run and the tests load in place of the 528 MB download, which they cannot make."""
    from ..cache import atomic_save

    path = Path(path) if path else vgg16_weights_path()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers = _vgg16_first_layers()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save({f"features.{name}": tensor for name, tensor in layers.state_dict().items()}, path)
    return path
