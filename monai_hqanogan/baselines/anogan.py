"""AnoGAN: anomaly scores from latent optimisation against a generator trained on normal images only.

Schlegl, Seeböck, Waldstein, Schmidt-Erfurth, Langs, "Unsupervised Anomaly Detection with Generative Adversarial
Networks to Guide Marker Discovery", IPMI 2017, https://arxiv.org/abs/1703.05921. For every image x, a latent z is
searched by gradient descent so that G(z) looks like x; a normal image is reproduced well, an anomaly is not. The
image score is the final value of the search objective and the anomaly map the residual |x - G(z*)|.

This is the reference point of every latent-space method that followed (f-AnoGAN replaced the search with an
encoder, HQ-AnoGAN with a pSp encoder into W+), so the evaluation reports it next to HQ-AnoGAN. It is slow: 500
generator and discriminator passes (forward and backward) per image, about 9 s per image at 32 px with the demo
networks (channel_base 2048, channel_max 128) on one busy CPU core (measured on 20 steps x 16 images, extrapolated).
"""

from __future__ import annotations

import hashlib
import logging
import math
import operator
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import chain
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from monai_hqanogan.networks.layers.modulated import check_deterministic_noise_mode
from monai_hqanogan.utils.validation import check_positive_number

from .base import ImageBatches, ReferenceBaseline, as_image_batch, iterate_image_batches

__all__ = ["AnoGANScorer"]

logger = logging.getLogger(__name__)

#: what the cache keeps of each image's result
_CACHED = ("score", "map", "z", "residual_loss", "feature_loss")

#: how many prior samples estimate the spread of the searched latent (the step scale of the search)
_SPREAD_SAMPLES = 256


def _check_int(name: str, value: Any, minimum: int = 1) -> int:
    try:
        number = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        number = None
    if number is None or number < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(number)


def _modules_of(obj: Any) -> list[nn.Module]:
    return [obj] if isinstance(obj, nn.Module) else []


def _tensors_of(modules: list[nn.Module]) -> Iterator[torch.Tensor]:
    return chain.from_iterable(chain(m.parameters(), m.buffers()) for m in modules)


def _device_of(obj: Any) -> torch.device:
    """Where a generator computes: the device of its first parameter or buffer (the CPU when it has none)."""
    for t in _tensors_of(_modules_of(obj)):
        return t.device
    return torch.device("cpu")


def _flat_features(features: Any, layer: int, owner: str) -> torch.Tensor:
    """One feature tensor per image, flattened to [B, F]: ``features[layer]`` of a list, or the tensor itself."""
    if isinstance(features, torch.Tensor):
        return features.flatten(1)
    if isinstance(features, (list, tuple)) and features and all(isinstance(f, torch.Tensor) for f in features):
        try:
            return features[layer].flatten(1)
        except IndexError:
            raise ValueError(
                f"feature_layer={layer} is out of range: {owner} returned {len(features)} feature maps."
            ) from None
    raise TypeError(f"{owner} must return a tensor or a non-empty list of tensors, got {type(features).__name__}.")


@contextmanager
def _frozen(modules: list[nn.Module]) -> Iterator[None]:
    """Eval mode and ``requires_grad=False`` for ``modules``; every module's mode and every flag restored on exit."""
    modes = [(m, m.training) for root in modules for m in root.modules()]
    flags = [(p, p.requires_grad) for root in modules for p in root.parameters()]
    try:
        for root in modules:
            root.eval()
            root.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode


class _StyleGAN2Latents:
    """Adapter for :class:`~monai_hqanogan.networks.nets.StyleGAN2Generator` (``mapping``, ``synthesis``, ``w_avg``).

    ``latent_space="z"`` searches z through the mapping network; ``"w"`` searches one w, broadcast to all styles.
    """

    kind = "stylegan2"

    def __init__(self, generator: Any, latent_space: str, noise_mode: str) -> None:
        self.generator, self.latent_space, self.noise_mode = generator, latent_space, noise_mode
        self.z_dim = int(generator.z_dim)
        self.num_ws = int(generator.num_ws)

    def image_shape(self) -> tuple[int, int] | None:
        channels, size = getattr(self.generator, "img_channels", None), getattr(self.generator, "resolution", None)
        return None if channels is None or size is None else (int(channels), int(size))

    def starts(self, restarts: int, rng: torch.Generator, device: torch.device) -> tuple[torch.Tensor, float]:
        """Starting latents [restarts, D] and the step scale of the searched space.

        Z: prior draws z ~ N(0, I), unit scale. W: ``w_avg`` first, then mapped prior draws; the scale is the
        per-coordinate standard deviation of w over 256 mapped prior samples (a fixed seed: a property of G).
        """
        z = torch.randn(restarts, self.z_dim, generator=rng).to(device)
        if self.latent_space == "z":
            return z, 1.0
        samples = torch.randn(_SPREAD_SAMPLES, self.z_dim, generator=torch.Generator().manual_seed(0)).to(device)
        scale = float(self.generator.mapping(samples)[:, 0].float().std(dim=0).mean())
        w_avg = self.generator.w_avg.detach().float().to(device)
        if not bool(w_avg.abs().sum() > 0):
            logger.warning(
                "the generator's w_avg is all zeros (it was never tracked in training): the W search starts from 0."
            )
        starts = torch.cat([w_avg.unsqueeze(0), self.generator.mapping(z)[1:, 0].float()])
        return starts, (scale if math.isfinite(scale) and scale > 0 else 1.0)

    def project(self, latent: torch.Tensor) -> None:
        """Nothing to do: neither Z (Gaussian) nor W is bounded."""

    def synthesize(self, latent: torch.Tensor) -> torch.Tensor:
        if self.latent_space == "z":
            ws = self.generator.mapping(latent)
        else:
            ws = latent.unsqueeze(1).expand(-1, self.num_ws, -1)
        return self.generator.synthesis(ws, noise_mode=self.noise_mode)


class _GenerateLatents:
    """Adapter for any object with ``generate(z) -> images`` and ``z_dim`` (e.g. an f-AnoGAN/WGAN generator)."""

    kind = "generate"

    def __init__(self, generator: Any) -> None:
        self.generator = generator
        self.z_dim = int(generator.z_dim)
        self._shape: tuple[int, int] | None = None

    def image_shape(self) -> tuple[int, int] | None:
        if self._shape is None:
            with torch.no_grad():
                probe = self.generator.generate(torch.zeros(1, self.z_dim, device=_device_of(self.generator)))
            if not isinstance(probe, torch.Tensor) or probe.ndim != 4 or probe.shape[-1] != probe.shape[-2]:
                shape = tuple(probe.shape) if isinstance(probe, torch.Tensor) else type(probe).__name__
                raise TypeError(f"generator.generate(z) must return square images [B, C, R, R], got {shape}.")
            self._shape = (int(probe.shape[1]), int(probe.shape[-1]))
        return self._shape

    def _prior(self, num: int, rng: torch.Generator, device: torch.device) -> torch.Tensor:
        if callable(getattr(self.generator, "sample_latent", None)):
            return self.generator.sample_latent(num, generator=rng).to(device).float()
        return torch.randn(num, self.z_dim, generator=rng).to(device)

    def starts(self, restarts: int, rng: torch.Generator, device: torch.device) -> tuple[torch.Tensor, float]:
        """Prior draws (``sample_latent`` when the object has it, else N(0, I)) and the prior's per-coordinate
        standard deviation (from 256 draws with a fixed seed; 1 for N(0, I))."""
        z = self._prior(restarts, rng, device)
        if not callable(getattr(self.generator, "sample_latent", None)):
            return z, 1.0
        scale = float(self._prior(_SPREAD_SAMPLES, torch.Generator().manual_seed(0), device).std(dim=0).mean())
        return z, (scale if math.isfinite(scale) and scale > 0 else 1.0)

    def project(self, latent: torch.Tensor) -> None:
        """Clamp z into [-1, 1] after each step when the generator declares ``z_prior == "uniform"``."""
        if getattr(self.generator, "z_prior", None) == "uniform":
            latent.clamp_(-1.0, 1.0)

    def synthesize(self, latent: torch.Tensor) -> torch.Tensor:
        return self.generator.generate(latent)


class AnoGANScorer(ReferenceBaseline):
    """AnoGAN anomaly scores by latent optimisation against a trained generator (and discriminator).

    Schlegl et al., "Unsupervised Anomaly Detection with Generative Adversarial Networks to Guide Marker Discovery",
    IPMI 2017, https://arxiv.org/abs/1703.05921. Written from the paper.

    For each image x, ``steps`` Adam steps minimise the paper's objective over the latent z:

        L(z) = (1 - lam) * L_R(z) + lam * L_D(z),
        L_R(z) = mean |x - G(z)|                    (residual loss, L1),
        L_D(z) = mean |f(x) - f(G(z))|              (discrimination loss as feature matching),

    where f is an intermediate discriminator representation, flattened per image. The paper sums the absolute
    differences; means keep ``lam`` meaningful whatever the image and feature sizes. The image score is the final
    L(z*) (evaluated after the last step) and the anomaly map is |x - G(z*)| averaged over channels, ``[N, 1, R, R]``.
    The paper updates z by backpropagation for 500 steps without naming an optimiser; Adam is used here.

    Generators (detected in this order; anything else is a TypeError):

    - a StyleGAN2 generator (``mapping(z) -> ws``, ``synthesis(ws, noise_mode=...)``, ``w_avg``, ``num_ws``,
      ``z_dim``, e.g. :class:`~monai_hqanogan.networks.nets.StyleGAN2Generator`). ``latent_space="z"`` searches z
      through the mapping network (the AnoGAN way); ``"w"`` searches one w directly, broadcast to all styles and
      started at ``w_avg``. Synthesis uses ``noise_mode`` (constant noise by default, so G is deterministic).
      Features: ``discriminator.extract_features(x)``, a list of per-image feature maps (all taken before the
      minibatch-stddev layer) of which ``feature_layer`` is used (default -1: the last, 4 x 4 block output, the
      representation closest to D's decision), or a tensor used as it is;
    - any object with ``generate(z) -> images [B, C, R, R]`` and ``z_dim`` (z of shape [B, z_dim]), and optionally
      ``discriminator_features(x) -> [B, F]`` for L_D (used unless ``discriminator`` is given),
      ``sample_latent(num, generator=torch.Generator) -> [num, z_dim]`` for the prior (default N(0, I)) and
      ``z_prior``: when it is ``"uniform"`` z is clamped to [-1, 1] after every step (as
      :class:`~monai_hqanogan.baselines.fanogan.FAnoGANBaseline` declares).

    Search: every image of a restart starts from the same point, drawn from the prior with a private
    ``torch.Generator`` seeded with ``seed`` (in W the first restart starts at ``w_avg``, further ones at mapped
    prior draws), so the result of an image does not depend on the batch it is in, nor on the global RNG. The
    images of a batch are optimised together, each image's loss summed, so each image gets its own gradient (and,
    Adam working per coordinate, its own steps): a batch gives the same result as the images one by one. With
    ``restarts > 1`` each image keeps the restart with the lowest final loss.

    ``lr`` is in units of the latent's prior spread: the step is multiplied by the per-coordinate standard deviation
    of the searched latent over 256 prior samples (1 for z ~ N(0, I); in W that of the mapped samples), so the same
    ``lr`` suits every space (the effective value is in ``last_info["lr_effective"]``). The default 0.01 moves each
    coordinate by at most about 5 prior standard deviations in 500 steps.

    The generator and discriminator are never trained here: they are put in eval mode with ``requires_grad=False``
    while searching, and every module's mode and every parameter's flag are restored afterwards. They are
    registered as submodules when they are ``nn.Module`` s, so ``.to(device)`` moves them and the state dict holds
    them; the search runs on the generator's device and results come back on the CPU.

    Caching: :meth:`score` and :meth:`anomaly_map` share one search per image. Each image's result is kept, keyed
    by a hash of its values, the settings and the networks' weights (their in-place version counters), for at most
    ``cache_images`` images (least recently used dropped first); a batch searches only its images not in the cache.
    Results do not depend on the batch, so this is exact whatever the batching: ``anomaly_map(x)`` then
    ``score(x)`` (as the evaluation calls them) runs the 500 steps once per image. Weights changed in place are
    detected; a non-``nn.Module`` generator's weights are not, so call :meth:`clear_cache` after changing one.
    :meth:`optimise` always searches (and fills the cache).

    Args:
        generator: the trained generator (see above), e.g. ``"@generator"`` in a bundle config.
        discriminator: the trained discriminator with ``extract_features(x)`` (per image), for L_D. Needed when
            ``lam > 0`` unless the generator has ``discriminator_features``; ignored when ``lam == 0``.
        latent_space: ``"z"`` (through the mapping network) or ``"w"`` (StyleGAN2 generators only).
        steps: Adam steps per image (500 in the paper).
        lam: weight of the discrimination loss in [0, 1] (0.1 in the paper).
        lr: Adam learning rate, in units of the latent's prior spread (see above).
        restarts: searches per image from different starting points; the best final loss is kept.
        seed: seed of the starting points.
        feature_layer: which of ``extract_features``' feature maps is f (negative counts from the last).
        noise_mode: the StyleGAN2 synthesis noise, ``"const"`` or ``"none"`` (deterministic).
        cache_images: how many images' results the cache keeps (0: no cache).
        progress: show a tqdm bar over the steps of each batch.

    Example::

        scorer = AnoGANScorer(generator=g, discriminator=d, steps=500).fit()
        scores = scorer.score(images)        # [N]; 500 steps per batch
        maps = scorer.anomaly_map(images)    # [N, 1, R, R]; from the cache, no new search
    """

    name = "AnoGAN"
    _latent_spaces = ("z", "w")

    def __init__(
        self,
        generator: Any,
        discriminator: Any | None = None,
        latent_space: str = "z",
        steps: int = 500,
        lam: float = 0.1,
        lr: float = 0.01,
        restarts: int = 1,
        seed: int = 0,
        feature_layer: int = -1,
        noise_mode: str = "const",
        cache_images: int = 4096,
        progress: bool = True,
    ) -> None:
        super().__init__()
        if latent_space not in self._latent_spaces:
            raise ValueError(f"latent_space must be one of {self._latent_spaces}, got {latent_space!r}.")
        self.steps = _check_int("steps", steps)
        self.restarts = _check_int("restarts", restarts)
        self.cache_images = _check_int("cache_images", cache_images, minimum=0)
        self.seed = _check_int("seed", seed, minimum=0)
        self.feature_layer = _check_int("feature_layer", feature_layer, minimum=-(2**62))
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0.0 <= lam <= 1.0:
            raise ValueError(f"lam must be a number in [0, 1], got {lam!r}.")
        check_positive_number("lr", lr)
        self.lam, self.lr = float(lam), float(lr)
        self._noise_mode = check_deterministic_noise_mode(noise_mode)
        self._latent_space = latent_space
        self.progress = bool(progress)

        if all(callable(getattr(generator, a, None)) for a in ("mapping", "synthesis")) and all(
            hasattr(generator, a) for a in ("w_avg", "num_ws", "z_dim")
        ):
            self._latents: _StyleGAN2Latents | _GenerateLatents = _StyleGAN2Latents(generator, latent_space, noise_mode)
        elif callable(getattr(generator, "generate", None)) and hasattr(generator, "z_dim"):
            if latent_space == "w":
                raise ValueError(
                    f"latent_space='w' needs a StyleGAN2 generator (mapping, synthesis, w_avg); "
                    f"{type(generator).__name__} only has generate(z): use latent_space='z'."
                )
            self._latents = _GenerateLatents(generator)
        else:
            raise TypeError(
                f"generator must be a StyleGAN2 generator (mapping(z), synthesis(ws, noise_mode=...), w_avg, num_ws, "
                f"z_dim) or an object with generate(z) -> images and z_dim; got {type(generator).__name__}."
            )
        if discriminator is not None and not callable(getattr(discriminator, "extract_features", None)):
            raise TypeError(
                f"discriminator must have extract_features(x) -> per-image feature maps, got "
                f"{type(discriminator).__name__}."
            )
        self.generator = generator
        self.discriminator = discriminator
        _ = self.feature_source  # raises now, not at the first score, when lam > 0 has no features
        self._cache: OrderedDict[tuple[str, str], dict[str, torch.Tensor]] = OrderedDict()
        self.fit_info: dict[str, Any] = {}
        self.last_info: dict[str, Any] = {}
        self._last_lr: float | None = None

    @property
    def latent_space(self) -> str:
        """``"z"`` or ``"w"`` (read-only: the generator adapter is built for it; build a new scorer to change it)."""
        return self._latent_space

    @property
    def noise_mode(self) -> str:
        """The StyleGAN2 synthesis noise (read-only)."""
        return self._noise_mode

    @property
    def feature_source(self) -> str | None:
        """Where f comes from: ``"discriminator"``, ``"generator"`` (its ``discriminator_features``) or None
        (``lam == 0``: the discriminator is not used).

        Raises:
            ValueError: ``lam > 0`` and neither a discriminator nor ``generator.discriminator_features`` is there.
        """
        if self.lam == 0:
            return None
        if self.discriminator is not None:
            return "discriminator"
        if callable(getattr(self.generator, "discriminator_features", None)):
            return "generator"
        raise ValueError(
            f"lam={self.lam} > 0 weights the discrimination loss, which needs discriminator features: pass "
            "discriminator=... (with extract_features) or a generator with discriminator_features(x), or set "
            "lam=0 (residual loss only)."
        )

    # -----------------------------------------------------------------------------------------------------------------
    # helpers

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """f(x) flattened per image, [B, F]."""
        if self.feature_source == "discriminator":
            return _flat_features(
                self.discriminator.extract_features(x), self.feature_layer, "discriminator.extract_features(x)"
            )
        return _flat_features(
            self.generator.discriminator_features(x), self.feature_layer, "generator.discriminator_features(x)"
        )

    def _networks(self) -> list[nn.Module]:
        nets = _modules_of(self.generator)
        if self.feature_source == "discriminator":
            nets += [m for m in _modules_of(self.discriminator) if m is not self.generator]
        return nets

    def _image_shape(self) -> tuple[int, int] | None:
        with _frozen(self._networks()):
            return self._latents.image_shape()

    def _settings_key(self) -> str:
        """A hash of what a search result depends on besides the image: settings, device, weights (versions)."""
        weights = tuple((t.data_ptr(), t._version) for t in _tensors_of(self._networks()))
        settings = (self._latents.kind, self.latent_space, self.steps, self.lam, self.lr, self.restarts, self.seed)
        settings += (self.feature_layer, self.noise_mode, str(_device_of(self.generator)), weights)
        return hashlib.blake2b(repr(settings).encode(), digest_size=20).hexdigest()

    @staticmethod
    def _digest(image: torch.Tensor) -> str:
        """A hash of one image's values (and shape)."""
        data = image.detach().to("cpu", torch.float32).contiguous()
        h = hashlib.blake2b(digest_size=20)
        h.update(str(tuple(data.shape)).encode())
        h.update(memoryview(data.numpy()).cast("B"))
        return h.hexdigest()

    def _remember(self, images: torch.Tensor, result: dict[str, Any]) -> None:
        """Keep each image's result, keyed by its values and the current settings and weights."""
        settings = self._settings_key()
        for i, image in enumerate(images):
            key = (self._digest(image), settings)
            self._cache[key] = {k: result[k][i].clone() for k in _CACHED}  # no view of the batch
            self._cache.move_to_end(key)
        while len(self._cache) > self.cache_images:
            self._cache.popitem(last=False)

    def clear_cache(self) -> None:
        """Forget the cached search results (needed only after changing a non-``nn.Module`` generator's weights)."""
        self._cache.clear()

    def _objective(
        self, x: torch.Tensor, fx: torch.Tensor | None, latent: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-image ``(L, L_R, L_D, G(latent))``; L_D is zeros when ``lam == 0``."""
        rec = self._latents.synthesize(latent)
        if rec.shape != x.shape:
            raise ValueError(
                f"the generator makes images of shape {tuple(rec.shape[1:])}, the input is {tuple(x.shape[1:])}."
            )
        residual = (x - rec).abs().flatten(1).mean(dim=1)
        if fx is None:
            feature = torch.zeros_like(residual)
            return residual, residual, feature, rec
        feature = (fx - self._features(rec)).abs().mean(dim=1)
        return (1.0 - self.lam) * residual + self.lam * feature, residual, feature, rec

    # -----------------------------------------------------------------------------------------------------------------
    # the search

    def optimise(self, images: torch.Tensor, progress: bool | None = None) -> dict[str, Any]:
        """Search the latent of each image of one batch; the core of :meth:`score` and :meth:`anomaly_map`.

        Args:
            images: one batch [B, C, R, R] in [-1, 1] matching the generator's channels and size.
            progress: show a tqdm bar over the steps (None: the constructor's ``progress``).

        Returns:
            a dict with, on the CPU: ``score`` [B] (the final L(z*)), ``map`` [B, 1, R, R] (|x - G(z*)| averaged over
            channels), ``z`` [B, D] (the best latent, in the searched space), ``reconstruction`` [B, C, R, R] (G(z*)),
            ``residual_loss`` and ``feature_loss`` [B] (L_R and L_D at z*), ``history`` [restarts, steps + 1, B]
            (L per image before every step, then the final value), ``restart`` [B] (the restart kept) and
            ``seconds`` (wall time of the search).

        Raises:
            RuntimeError: the scorer is not fitted.
            ValueError: not a batch [B, C, R, R] of the generator's channels and size, or non-finite values.
        """
        self._check_fitted()
        shape = self._image_shape()
        images = as_image_batch(images, "images", *(shape or (None, None)))
        start = time.perf_counter()
        show = self.progress if progress is None else bool(progress)
        nets = self._networks()
        device = _device_of(self.generator)
        b = images.shape[0]
        bar = tqdm(total=self.steps * self.restarts, desc=self.name, unit="step", disable=not show, leave=False)
        # a search needs autograd even when called under torch.no_grad() or torch.inference_mode()
        with _frozen(nets), torch.inference_mode(False), torch.enable_grad():
            try:
                x = images.to(device, torch.float32).clone()
                with torch.no_grad():
                    fx = None if self.feature_source is None else self._features(x).detach()
                    rng = torch.Generator().manual_seed(self.seed)
                    starts, scale = self._latents.starts(self.restarts, rng, device)
                lr = self.lr * scale
                history = torch.empty(self.restarts, self.steps + 1, b, device=device)
                best: dict[str, torch.Tensor] = {}
                for r in range(self.restarts):
                    latent = starts[r].detach().float().expand(b, -1).clone().requires_grad_(True)
                    optimizer = torch.optim.Adam([latent], lr=lr)
                    for step in range(self.steps):
                        loss = self._objective(x, fx, latent)[0]
                        history[r, step] = loss.detach()
                        optimizer.zero_grad(set_to_none=True)
                        loss.sum().backward()
                        optimizer.step()
                        with torch.no_grad():
                            self._latents.project(latent)
                        bar.update(1)
                        if show and step % 25 == 0:
                            bar.set_postfix(loss=f"{float(loss.detach().mean()):.4g}")
                    with torch.no_grad():
                        total, residual, feature, rec = self._objective(x, fx, latent)
                    history[r, -1] = total
                    bad = ~torch.isfinite(history[r]).all(dim=1)
                    if bool(bad.any()):  # checked once per restart: no device sync per step
                        raise FloatingPointError(
                            f"the AnoGAN objective became non-finite at restart {r}, step {int(bad.nonzero()[0])}: "
                            f"lower lr (now {self.lr}) or check the generator and the images."
                        )
                    found = {
                        "score": total,
                        "residual_loss": residual,
                        "feature_loss": feature,
                        "reconstruction": rec,
                        "z": latent.detach(),
                        "restart": torch.full((b,), r, device=device),
                    }
                    if not best:
                        best = found
                    else:
                        better = total < best["score"]
                        for k, v in found.items():
                            mask = better.view(-1, *([1] * (v.ndim - 1)))
                            best[k] = torch.where(mask, v, best[k])
            finally:
                bar.close()
        result: dict[str, Any] = {k: v.detach().cpu() for k, v in best.items()}
        result["map"] = (images - result["reconstruction"]).abs().mean(dim=1, keepdim=True)
        result["history"] = history.cpu()
        result["seconds"] = time.perf_counter() - start
        self._last_lr = lr
        if self.cache_images:
            self._remember(images, result)
        return result

    def _results(self, images: ImageBatches, batch_size: int, progress: bool | None) -> dict[str, torch.Tensor]:
        """Score, map, latent and losses of every image, from the cache or a new search per batch."""
        self._check_fitted()
        shape = self._image_shape()
        start = time.perf_counter()
        settings = self._settings_key()
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in _CACHED}
        n_new = n_cached = batches = 0
        search_s = 0.0
        channels, size = shape if shape is not None else (None, None)
        for batch in iterate_image_batches(images, batch_size, what="images", channels=channels, size=size):
            batches += 1
            rows: list[dict[str, torch.Tensor] | None] = [None] * batch.shape[0]
            if self.cache_images:
                for i, image in enumerate(batch):
                    key = (self._digest(image), settings)
                    rows[i] = self._cache.get(key)
                    if rows[i] is not None:
                        self._cache.move_to_end(key)
            missing = [i for i, row in enumerate(rows) if row is None]
            if missing:
                found = self.optimise(batch[missing], progress=progress)
                search_s += found["seconds"]
                for j, i in enumerate(missing):
                    rows[i] = {k: found[k][j] for k in _CACHED}
            n_new += len(missing)
            n_cached += batch.shape[0] - len(missing)
            for k in _CACHED:
                parts[k].append(torch.stack([row[k] for row in rows]))
        self.last_info = {
            "images": n_new + n_cached,
            "optimised_images": n_new,
            "cached_images": n_cached,
            "batches": batches,
            "seconds": time.perf_counter() - start,
            "seconds_per_image": search_s / n_new if n_new else None,
            "steps": self.steps,
            "restarts": self.restarts,
            "latent_space": self.latent_space,
            "lam": self.lam,
            "lr_effective": self._last_lr,
            "device": str(_device_of(self.generator)),
        }
        return {k: torch.cat(v) for k, v in parts.items()}

    # -----------------------------------------------------------------------------------------------------------------
    # the ReferenceBaseline interface

    def fit(self, images: ImageBatches | None = None, **kwargs: Any) -> AnoGANScorer:
        """Check the generator against the images and mark the scorer fitted; nothing is trained.

        AnoGAN has no fitting of its own: the generator (and discriminator) were trained on normal images
        elsewhere. ``fit`` checks that the generator makes images of the given channels and size (a tensor is
        checked whole; of an iterable of batches only the first batch, so no data set is loaded for nothing) and
        marks the scorer fitted. Keyword arguments of other baselines' ``fit`` (``epochs``, ``batch_size``, ...)
        are accepted and ignored, so one evaluation loop can fit them all; they are listed in ``fit_info``.

        Args:
            images: normal images, a tensor [N, C, R, R] or an iterable of batches (None: no check).

        Raises:
            ValueError: the images do not match the generator's channels and size, or are not valid images.
        """
        shape = self._image_shape()
        channels, size = shape if shape is not None else (None, None)
        checked = 0
        if images is not None:
            first = next(iter(iterate_image_batches(images, 1 << 30, what="fit images", channels=channels, size=size)))
            checked = int(images.shape[0]) if isinstance(images, torch.Tensor) else int(first.shape[0])
        if kwargs:
            logger.info(f"{self.name}: fit() trains nothing; ignored arguments {sorted(kwargs)}.")
        self.fit_info = {
            "trained": False,
            "generator": type(self.generator).__name__,
            "adapter": self._latents.kind,
            "image_channels": channels,
            "image_size": size,
            "checked_images": checked,
            "ignored_arguments": sorted(kwargs),
        }
        self.fitted.fill_(True)
        return self

    def score(self, images: ImageBatches, batch_size: int = 256, progress: bool | None = None) -> torch.Tensor:
        """The AnoGAN score per image, the final L(z*), ``[N]`` on the CPU (cached per image, see the class).

        Args:
            images: a tensor [N, C, R, R] or an iterable of batches.
            batch_size: images searched together when ``images`` is one tensor.
            progress: show a tqdm bar (None: the constructor's ``progress``).
        """
        return self._results(images, batch_size, progress)["score"]

    def anomaly_map(self, images: ImageBatches, batch_size: int = 256, progress: bool | None = None) -> torch.Tensor:
        """|x - G(z*)| averaged over channels, ``[N, 1, R, R]`` on the CPU (cached per image, see the class)."""
        return self._results(images, batch_size, progress)["map"]

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, adapter={self._latents.kind!r}, latent_space={self.latent_space!r}, "
            f"steps={self.steps}, lam={self.lam}, lr={self.lr}, restarts={self.restarts}, seed={self.seed}"
        )
