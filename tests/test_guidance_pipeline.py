"""Classifier-free guidance as shipped: what `Pipeline.generate` sends to the sampler, for every model kind.

The convention is w: (1 + w) * cond - w * uncond, the unconditional branch on the flow's null context. Each test
derives the expected result without versadiff's guidance code, so a swapped convention (scale s = w), a
flipped sign or a wrong null context fails:

  * Gaussian pixel model, end to end on an analytic denoiser: data of class k is N(mu_k, s^2 I), the null class
    N(mu_null, s^2 I). Its exact x0-posterior is affine in z_t, so guided sampling is exactly the sampling of
    N(mu_k + w (mu_k - mu_null), s^2 I): positive w moves every sample toward its class, away from the null
    class, by w (mu_k - mu_null) -- a known amount (the solvers are translation-equivariant on such a model).
  * VQ-Diffusion: a network with fixed per-class logits; the log p(x0) the sampler receives at every step must
    be log_softmax(lu + (1 + w) (lc - lu)).
  * Every other flow (VD's four flows on a tiny multi-flow diffuser, the toy plug-in modality): the x0 the
    sampler receives equals (1 + w) net(cond) - w net(null) computed here from the network, the encoders and
    the null context each flow must use (empty prompt; zeros for image variation; a black image for
    image-to-text).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from versadiff.config import load_config
from versadiff.processes.parameterization import to_x0_eps
from versadiff.tasks import task_class
from tiny_vd import write_tiny_vd_parts  # tests/tiny_vd.py

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden"

# --------------------------------------------------------------------------------------------------------------
# Gaussian: an analytic class-conditional Gaussian denoiser


class GaussianClasses(nn.Module):
    """The exact denoiser of x0 ~ N(mu[label], s^2 I) (label -1 = the null class, its own mean), as the raw
    output of the run's prediction type. t is recovered from the network time (1000 t)."""

    def __init__(self, means: torch.Tensor, null_mean: torch.Tensor, s: float, schedule, prediction: str) -> None:
        super().__init__()
        self.register_buffer("means", torch.cat([means, null_mean[None]]).double())  # [K + 1, C, H, W]
        self.s, self.schedule, self.prediction = s, schedule, prediction

    def forward(self, z, t_net, class_labels):
        t = t_net.double() / 1000.0
        alpha, sigma = (v.view(-1, 1, 1, 1) for v in self.schedule.alpha_sigma(t))
        mu = self.means[torch.where(class_labels < 0, self.means.shape[0] - 1, class_labels)]
        zd, s2 = z.double(), self.s**2
        x0 = mu + alpha * s2 / (alpha**2 * s2 + sigma**2) * (zd - alpha * mu)
        if self.prediction == "x0":
            out = x0
        elif self.prediction == "eps":
            out = (zd - alpha * x0) / sigma
        elif self.prediction == "v":
            out = (alpha * zd - x0) / sigma  # = alpha * eps - sigma * x0
        else:
            raise ValueError(self.prediction)
        return out.to(z.dtype)


K, SHAPE, STD = 3, (1, 4, 4), 0.05


def _means():
    g = torch.Generator().manual_seed(0)
    means = (torch.rand(K, *SHAPE, generator=g) - 0.5) * 0.4  # in [-0.2, 0.2]
    null_mean = torch.full(SHAPE, -0.1)  # not zero, not any class mean: a wrong null branch shows
    return means, null_mean


def gaussian_pipeline(prediction: str = "v"):
    cfg = load_config("shapes_unet_tiny", [f"diffusion.prediction={prediction}"])
    task = task_class(cfg.task)
    schedule = task.sampling(cfg, []).schedule
    means, null_mean = _means()
    net = GaussianClasses(means, null_mean, STD, schedule, prediction)
    info = {"num_classes": K, "image_shape": list(SHAPE)}
    return task.pipeline(net, cfg, info), means, null_mean


@pytest.mark.parametrize("sampler,steps,prediction", [("dpmpp", 20, "v"), ("ddim", 10, "eps"), ("euler", 10, "x0")])
def test_positive_guidance_moves_samples_toward_the_class_by_w_times_the_class_gap(sampler, steps, prediction):
    model, means, null_mean = gaussian_pipeline(prediction)
    labels, seeds = [0, 1, 2, 1], [5, 6, 7, 8]
    plain = model.generate(seeds, class_labels=labels, sampler=sampler, steps=steps, guidance=0.0)
    gap = means[labels] - null_mean  # [B, C, H, W]
    for w in (1.0, 2.0, -0.5):
        guided = model.generate(seeds, class_labels=labels, sampler=sampler, steps=steps, guidance=w)
        # the shift is exact up to alpha_1 * s (~1e-6, the start's tiny signal) and float32 rounding
        torch.testing.assert_close(guided - plain, w * gap, rtol=0, atol=2e-4)
    # and unguided sampling of class k lands around mu_k with the data's spread (a working sampler)
    dev = (plain - means[labels]).flatten(1)
    assert dev.mean(1).abs().max() < 4 * STD and 0.3 * STD < dev.std() < 2 * STD


def test_unconditional_samples_use_the_null_class():
    model, means, null_mean = gaussian_pipeline("v")
    # no context: the null class (label -1), here N(mu_null, s^2): guidance is refused (nothing to guide)
    x = model.generate([0, 1, 2, 3], sampler="dpmpp", steps=20, guidance=0.0)
    assert (x.mean(dim=(1, 2, 3)) - null_mean.mean()).abs().max() < 4 * STD
    x_lbl = model.generate([0, 1, 2, 3], class_labels=-1, sampler="dpmpp", steps=20, guidance=0.0)
    torch.testing.assert_close(x, x_lbl, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------------------
# VQ-Diffusion: fixed per-class logits; the sampler's log p(x0) at every step


class FixedLogits(nn.Module):
    """logits [B, K, L] that depend only on the class label (-1 = null); records the labels of every call."""

    def __init__(self, num_codes: int, num_classes: int, length: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.register_buffer("table", torch.randn(num_classes + 1, num_codes, 1, generator=g) * 2.0)
        self.length, self.calls = length, []

    def forward(self, x_t, t, class_labels):
        self.calls.append(class_labels.clone())
        idx = torch.where(class_labels < 0, self.table.shape[0] - 1, class_labels)
        return self.table[idx].expand(-1, -1, self.length).clone()


@pytest.fixture(scope="module")
def vq_pipeline():
    cfg = load_config("shapes_vqdiffusion", [f"autoencoder.path={GOLDEN / 'vqae.safetensors'}"])
    task = task_class(cfg.task)
    info = {"num_classes": 3, "image_shape": [3, 32, 32]}
    probe = task.pipeline(FixedLogits(1, 3, 1), cfg, info)  # only to read the codec's facts
    codes, grid = probe.flows["class-to-image"].codec.num_codes, probe.sample_shape()
    net = FixedLogits(codes, 3, int(math.prod(grid)))
    return task.pipeline(net, cfg, info), net


@pytest.mark.parametrize("w", [1.0, 2.5, -0.5])
def test_vq_pipeline_sends_the_sampler_log_softmax_of_lu_plus_1_plus_w_times_lc_minus_lu(vq_pipeline, w):
    model, net = vq_pipeline
    labels = [0, 2, 1]
    seen = []
    net.calls.clear()
    model.generate([0, 1, 2], class_labels=labels, sampler="fast", steps=4, guidance=w, truncation=1.0,
                   callback=lambda d: seen.append(d["log_x0"].clone()))
    lc = F.log_softmax(net.table[labels].double(), dim=1)  # [B, K, 1]
    lu = F.log_softmax(net.table[-1:].double(), dim=1)
    want = F.log_softmax(lu + (1.0 + w) * (lc - lu), dim=1).clamp(-70, 0).float().expand(-1, -1, net.length)
    assert len(seen) >= 4
    for log_p in seen:
        torch.testing.assert_close(log_p, want, rtol=0, atol=1e-5)
    # every network call evaluated the requested classes and the null class (-1), nothing else
    for call in net.calls:
        assert sorted(call.tolist()) == sorted(labels + [-1] * len(labels))


def test_vq_pipeline_w0_is_the_plain_conditional(vq_pipeline):
    model, net = vq_pipeline
    seen, net.calls[:] = [], []
    model.generate([0, 1], class_labels=[1, 2], sampler="fast", steps=4, guidance=0.0, truncation=1.0,
                   callback=lambda d: seen.append(d["log_x0"]))
    want = F.log_softmax(net.table[[1, 2]].double(), dim=1).float().expand(-1, -1, net.length)
    torch.testing.assert_close(seen[0], want, rtol=0, atol=1e-5)
    assert all(sorted(c.tolist()) == [1, 2] for c in net.calls)  # no unconditional branch at w = 0


# --------------------------------------------------------------------------------------------------------------
# every other flow: the x0 the sampler receives, recomputed from the network and the flow's null context


def expected_guided_x0(model, flow: str, z, t: float, cond_ctx, null_ctx, w: float):
    """(1 + w) net(z, cond) - w net(z, null) turned into x0 (and clipped as the run says), without versadiff's
    guidance code."""
    bound, sampling = model.flows[flow], model.sampling
    schedule = sampling.schedule
    tt = torch.full((z.shape[0],), t, dtype=torch.float64)
    net_t = schedule.net_time(tt).to(torch.float32)
    from versadiff.flows import network_condition

    key = bound.encoder.cond_key
    raw_c = model.net(z, net_t, **network_condition(model.net, bound.flow, cond_ctx, key))
    raw_u = model.net(z, net_t, **network_condition(model.net, bound.flow, null_ctx, key))
    mixed = (1.0 + w) * raw_c - w * raw_u
    alpha, sigma = schedule.alpha_sigma(tt)
    x0, _ = to_x0_eps(mixed, z, alpha, sigma, sampling.prediction)
    if sampling.clip_x0 is not None:
        x0 = x0.clamp(-sampling.clip_x0, sampling.clip_x0)
    return x0


def check_flow_guidance(model, flow: str, inputs, null_ctx, w: float = 1.5, steps: int = 3):
    seen = []
    with torch.no_grad():
        model.generate(list(range(len(inputs))), flow=flow, context=inputs, sampler="ddim", steps=steps,
                       guidance=w, callback=lambda d: seen.append({k: (v.clone() if torch.is_tensor(v) else v)
                                                                   for k, v in d.items()}))
        assert len(seen) == steps
        cond_ctx = model.flows[flow].encoder.encode(inputs)
        for rec in seen:
            want = expected_guided_x0(model, flow, rec["x"], rec["t"], cond_ctx, null_ctx, w)
            err = (rec["x0"] - want).abs().max()
            # the check tells the shipped convention from the plain conditional, the scale convention (s = w)
            # and a flipped sign: each differs from `want` by far more than the rounding of `err`
            for other in (0.0, w - 1.0, -w):
                wrong = expected_guided_x0(model, flow, rec["x"], rec["t"], cond_ctx, null_ctx, other)
                gap = (wrong - want).abs().max()
                assert err < 0.02 * gap, (flow, rec["t"], other, float(err), float(gap))


@pytest.fixture(scope="module")
def vd_model(tmp_path_factory):
    """A VD pipeline (four flows) on tiny random components in the folder layouts the real ones load from."""
    root = tmp_path_factory.mktemp("vd_guidance")
    write_tiny_vd_parts(root)
    cfg = load_config("vd_shapes", [
        "model.model_channels=16", "model.context_dim=16", "model.text_dim=8", "model.image_size=16",
        "model.num_heads=2", "model.data_streams=[image, text]", "model.norm_groups=8",
        "flows=[text-to-image, image-variation, image-to-text, text-variation]",
        f"codecs.image.path={root / 'kl'}", f"codecs.text.path={root / 'tvae'}",
        f"encoders.text.path={root / 'clip'}", f"encoders.image.path={root / 'clip'}"])
    task = task_class(cfg.task)
    torch.manual_seed(1)
    net = task.build_network(cfg)
    with torch.no_grad():  # zero-initialised output layers would make every branch equal: randomise them
        for p in net.parameters():
            if p.abs().max() == 0:
                p.normal_(0, 0.05)
    return task.pipeline(net, cfg, {"num_classes": 0, "image_shape": [3, 32, 32]})


def _images(n):
    g = torch.Generator().manual_seed(3)
    return torch.rand(n, 3, 32, 32, generator=g) * 2 - 1


def test_vd_text_to_image_guides_against_the_empty_prompt(vd_model):
    enc = vd_model.flows["text-to-image"].encoder
    prompts = ["a red circle", "a small blue square"]
    check_flow_guidance(vd_model, "text-to-image", prompts, enc.encode(["", ""]))


def test_vd_text_variation_guides_against_the_empty_prompt(vd_model):
    enc = vd_model.flows["text-variation"].encoder
    texts = ["a green triangle", "a large red square"]
    check_flow_guidance(vd_model, "text-variation", texts, enc.encode(["", ""]))


def test_vd_image_variation_guides_against_a_zero_context(vd_model):
    enc = vd_model.flows["image-variation"].encoder
    images = _images(2)
    check_flow_guidance(vd_model, "image-variation", list(images), torch.zeros_like(enc.encode(images)))


def test_vd_image_to_text_guides_against_the_encoding_of_a_black_image(vd_model):
    enc = vd_model.flows["image-to-text"].encoder
    images = _images(2)
    black = -torch.ones(2, 3, 32, 32)
    null = enc.encode(black)
    assert null.abs().sum() > 0  # not the zeros of image variation
    check_flow_guidance(vd_model, "image-to-text", list(images), null)


def test_toy_plugin_flow_guides_against_its_encoders_null(tmp_path):
    import yaml

    sys.path.insert(0, str(HERE / "plugins"))
    import toy_signal

    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump({"name": "toy_signal", "task": "gaussian", "model": {"type": "toy_signal_net"},
                       "data": {"name": "toy_signal", "size": 8}, "flows": ["frequency-to-signal"],
                       "codecs": {"signal": {"type": "toy_signal_gain", "gain": 1.25}},
                       "encoders": {"frequency": {"type": "toy_frequency", "dim": 16}},
                       "diffusion": {"prediction": "v", "p_uncond": 0.1, "clip_x0": None}}))  # v: bounded x0 on random weights
    cfg = load_config(str(path))
    task = task_class(cfg.task)
    torch.manual_seed(0)
    model = task.pipeline(task.build_network(cfg), cfg,
                          {"num_classes": 0, "data_shapes": {"signal": [1, toy_signal.LENGTH]}})
    enc = model.flows["frequency-to-signal"].encoder
    check_flow_guidance(model, "frequency-to-signal", [1.0, 3.0], enc.encode([0.0, 0.0]))


def test_class_to_image_unet_guides_against_the_null_class():
    """The shipped model kind (a class-conditional UNet), random weights: the x0 at every step."""
    cfg = load_config("shapes_unet_tiny", ["model.base_channels=16", "model.norm_groups=8", "model.channel_mult=[1, 2]",
                                           "model.attention_resolutions=[]", "model.emb_channels=32"])
    task = task_class(cfg.task)
    torch.manual_seed(0)
    net = task.build_network(cfg)
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().max() == 0:
                p.normal_(0, 0.05)
    model = task.pipeline(net, cfg, {"num_classes": 18, "image_shape": [3, 32, 32]})
    check_flow_guidance(model, "class-to-image", [4, 11], torch.tensor([-1, -1]))
