"""GaussianProcess and posterior: checked against independent closed forms computed in float64."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from versadiff.processes import (
    PREDICTION_TYPES,
    WEIGHTINGS,
    DiscreteSchedule,
    GaussianProcess,
    LogSNRSchedule,
    VPSDESchedule,
    linear_betas,
    posterior,
    rescale_zero_terminal_snr,
    to_x0_eps,
)
from versadiff.processes.gaussian import discretized_gaussian_log_likelihood, normal_kl

f64 = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class FixedOutput(nn.Module):
    """A 'network' whose raw output is a fixed tensor; records what it was called with."""

    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.out, self.calls = out, []

    def forward(self, z, t, **cond):
        self.calls.append((z, t, cond))
        return self.out


class TinyClassNet(nn.Module):
    """A real conditional network: label embedding (index 0 = null for label -1) + MLP."""

    def __init__(self, dim: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.emb = nn.Embedding(classes + 1, 8)
        self.mlp = nn.Sequential(nn.Linear(dim + 8 + 1, 32), nn.SiLU(), nn.Linear(32, dim))
        self.seen: list[torch.Tensor] = []

    def forward(self, z, t, class_labels):
        self.seen.append(class_labels.clone())
        h = torch.cat([z, self.emb(class_labels + 1), t[:, None] / 1000], dim=1)
        return self.mlp(h)


# --- posterior ------------------------------------------------------------------------------


def bayes_posterior(z_t, x, lt, ls):
    """q(z_s | z_t, x) by Gaussian conditioning of the joint (z_s, z_t) | x, float64."""
    a_s, a_t = torch.sigmoid(ls).sqrt(), torch.sigmoid(lt).sqrt()
    v_s, v_t = torch.sigmoid(-ls), torch.sigmoid(-lt)
    a_ts = a_t / a_s  # z_t = a_ts z_s + noise of variance v_t - a_ts^2 v_s
    cov = a_ts * v_s  # Cov(z_s, z_t | x)
    mean = a_s[:, None] * x + (cov / v_t)[:, None] * (z_t - a_t[:, None] * x)
    var = v_s - cov**2 / v_t
    return mean, var


def test_posterior_fixed_small_is_the_bayes_posterior():
    g = gen(1)
    B, D = 6, 5
    lt = torch.tensor([-12.0, -3.0, 0.0, 2.0, 9.0, -0.5], dtype=f64)
    ls = lt + torch.tensor([0.01, 1.0, 3.0, 0.3, 5.0, 30.0], dtype=f64)
    x, z = torch.randn(B, D, generator=g, dtype=f64), torch.randn(B, D, generator=g, dtype=f64)
    mean, logvar = posterior(z, x, lt, ls, "fixed_small")
    ref_mean, ref_var = bayes_posterior(z, x, lt, ls)
    assert torch.allclose(mean, ref_mean, rtol=1e-10, atol=1e-12)
    assert torch.allclose(logvar.squeeze(1).exp(), ref_var, rtol=1e-9, atol=0)
    assert logvar.shape == (B, 1)
    # fixed_large is DDPM's beta_t = 1 - abar_t / abar_s, fixed_medium the log-linear blend
    _, lv_large = posterior(z, x, lt, ls, "fixed_large")
    beta = 1 - torch.sigmoid(lt) / torch.sigmoid(ls)
    assert torch.allclose(lv_large.squeeze(1).exp(), beta, rtol=1e-9)
    _, lv_med = posterior(z, x, lt, ls, "fixed_medium", intp_frac=0.3)
    assert torch.allclose(lv_med, 0.7 * logvar + 0.3 * lv_large, rtol=1e-12)
    # dtype follows z_t
    m32, lv32 = posterior(z.float(), x.float(), lt, ls)
    assert m32.dtype == torch.float32 and lv32.dtype == torch.float32


def test_posterior_ddim_and_clean_end():
    g = gen(2)
    lt = torch.tensor([-4.0, 0.5, 3.0], dtype=f64)
    ls = torch.tensor([-1.0, 2.0, math.inf], dtype=f64)
    x, z = torch.randn(3, 4, generator=g, dtype=f64), torch.randn(3, 4, generator=g, dtype=f64)
    # eta = 1 is the ancestral (fixed_small) step
    m1, lv1 = posterior(z, x, lt, ls, eta=1.0)
    m, lv = posterior(z, x, lt, ls, "fixed_small")
    assert torch.allclose(m1, m, rtol=1e-10) and torch.allclose(lv1[:2], lv[:2], rtol=1e-10)
    # eta = 0: z_s = alpha_s x + sigma_s eps_hat, deterministic
    m0, lv0 = posterior(z, x, lt, ls, eta=0.0)
    a_t, s_t = torch.sigmoid(lt).sqrt()[:, None], torch.sigmoid(-lt).sqrt()[:, None]
    a_s, s_s = torch.sigmoid(ls).sqrt()[:, None], torch.sigmoid(-ls).sqrt()[:, None]
    eps_hat = (z - a_t * x) / s_t
    assert torch.allclose(m0, a_s * x + s_s * eps_hat, rtol=1e-10, atol=1e-12)
    assert torch.all(torch.isneginf(lv0))
    # eta = 0.5: var = eta^2 (1 - r) sigma_s^2 and mean = alpha_s x + sqrt(sigma_s^2 - var) eps_hat
    mh, lvh = posterior(z[:2], x[:2], lt[:2], ls[:2], eta=0.5)
    var = 0.25 * (1 - torch.exp(lt[:2] - ls[:2])) * torch.sigmoid(-ls[:2])
    assert torch.allclose(lvh.squeeze(1).exp(), var, rtol=1e-10)
    ref = a_s[:2] * x[:2] + (s_s[:2] ** 2 - var[:, None]).sqrt() * eps_hat[:2]
    assert torch.allclose(mh, ref, rtol=1e-10, atol=1e-12)
    # logsnr_s = +inf: the mean is x_hat and no noise, for every variance type
    for variance in ("fixed_small", "fixed_large", "fixed_medium"):
        mc, lvc = posterior(z, x, lt, ls, variance)
        assert torch.equal(mc[2], x[2]) and torch.isneginf(lvc[2]).all()
        assert torch.all(torch.isfinite(mc))


def test_zero_terminal_snr_is_guarded():
    sched = DiscreteSchedule.from_betas(rescale_zero_terminal_snr(linear_betas(20, 1e-3, 0.2)))
    x, z = torch.randn(2, 3, generator=gen(9), dtype=f64), torch.randn(2, 3, generator=gen(10), dtype=f64)
    lt = sched.logsnr(torch.tensor([1.0, 1.0], dtype=f64))
    ls = sched.logsnr(torch.tensor([0.95, 0.5], dtype=f64))
    mean, logvar = posterior(z, x, lt, ls)  # alpha_t = 0: z_t carries no signal, r = 0
    a_s, v_s = torch.sigmoid(ls).sqrt(), torch.sigmoid(-ls)
    assert torch.allclose(mean, a_s[:, None] * x) and torch.allclose(logvar.squeeze(1).exp(), v_s)
    # DDIM there uses eps_hat = z_t (sigma_t = 1): z_s = alpha_s x + sigma_s z_t
    mean0, _ = posterior(z, x, lt, ls, eta=0.0)
    assert torch.allclose(mean0, a_s[:, None] * x + v_s.sqrt()[:, None] * z)
    for prediction in ("eps", "both"):
        with pytest.raises(ValueError, match="zero terminal SNR"):
            GaussianProcess(sched, prediction=prediction)
    proc = GaussianProcess(sched, prediction="v", weighting="truncated_snr")
    loss = proc.training_losses(FixedOutput(torch.zeros(2, 3, dtype=f64)), x, t=torch.ones(2, dtype=f64))
    assert torch.allclose(loss, (x**2).mean(1))  # v_hat = 0 at alpha = 0 means x_hat = 0


def test_posterior_rejects_bad_input():
    z = torch.zeros(2, 3)
    lt, ls = torch.tensor([0.0, 1.0], dtype=f64), torch.tensor([1.0, 0.5], dtype=f64)
    with pytest.raises(ValueError, match="logsnr_s > logsnr_t"):
        posterior(z, z, lt, ls)
    with pytest.raises(ValueError, match="fixed_small, fixed_large, fixed_medium"):
        posterior(z, z, lt, lt + 1, "learned")
    with pytest.raises(ValueError, match="eta"):
        posterior(z, z, lt, lt + 1, eta=1.5)


# --- targets, conversions and weightings -----------------------------------------------------


@pytest.mark.parametrize("prediction", PREDICTION_TYPES)
def test_targets_round_trip_through_conversion(prediction):
    g = gen(3)
    proc = GaussianProcess(LogSNRSchedule("cosine"), prediction=prediction)
    x0, noise = torch.randn(5, 2, 3, generator=g, dtype=f64), torch.randn(5, 2, 3, generator=g, dtype=f64)
    t = torch.tensor([0.01, 0.2, 0.5, 0.8, 0.99], dtype=f64)
    z = proc.q_sample(x0, t, noise)
    alpha, sigma = proc.schedule.alpha_sigma(t)
    assert torch.allclose(z, alpha[:, None, None] * x0 + sigma[:, None, None] * noise)
    targets = proc.x0_eps_v_targets(x0, noise, t)
    x0_hat, eps_hat = to_x0_eps(targets[prediction], z, alpha, sigma, prediction)
    assert torch.allclose(x0_hat, x0, atol=1e-9) and torch.allclose(eps_hat, noise, atol=1e-9)
    v = targets["v"]
    assert torch.allclose(v, alpha[:, None, None] * noise - sigma[:, None, None] * x0)


def naive_x0(prediction, out, z, lam):
    """x0_hat from a raw output, written out independently in float64."""
    a = torch.sigmoid(lam).sqrt().reshape(-1, 1, 1)
    s = torch.sigmoid(-lam).sqrt().reshape(-1, 1, 1)
    if prediction == "eps":
        return (z - s * out) / a
    if prediction == "x0":
        return out
    if prediction == "v":
        return a * z - s * out
    xd, e = out[:, :1], out[:, 1:]
    return s**2 * xd + a**2 * (z - s * e) / a


NAIVE_W = {
    "constant": lambda snr: torch.ones_like(snr),
    "snr": lambda snr: snr,
    "truncated_snr": lambda snr: torch.clamp(snr, min=1),
    "alpha2": lambda snr: 1 + snr,
    "min_snr": lambda snr: torch.clamp(snr, max=5.0),
}


@pytest.mark.parametrize("prediction", PREDICTION_TYPES)
@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_each_weighting_is_w_lambda_times_x0_error(prediction, weighting):
    g = gen(4)
    sched = LogSNRSchedule("cosine")
    proc = GaussianProcess(sched, prediction=prediction, weighting=weighting)
    B = 6
    x0, noise = torch.randn(B, 1, 4, generator=g, dtype=f64), torch.randn(B, 1, 4, generator=g, dtype=f64)
    t = torch.tensor([0.02, 0.2, 0.45, 0.55, 0.8, 0.97], dtype=f64)  # SNR from ~1e3 to ~1e-3
    out = torch.randn(B, 2 if prediction == "both" else 1, 4, generator=g, dtype=f64)
    loss = proc.training_losses(FixedOutput(out), x0, t=t, noise=noise)
    lam = sched.logsnr(t)
    z = torch.sigmoid(lam).sqrt()[:, None, None] * x0 + torch.sigmoid(-lam).sqrt()[:, None, None] * noise
    ref = NAIVE_W[weighting](lam.exp()) * ((naive_x0(prediction, out, z, lam) - x0) ** 2).mean(dim=(1, 2))
    assert loss.shape == (B,)
    assert torch.allclose(loss, ref, rtol=1e-8)
    assert torch.allclose(proc.loss_weight(lam), NAIVE_W[weighting](lam.exp()))


def test_mse_loss_is_stable_at_the_schedule_ends():
    # lambda = +-20: SNR 5e8 and 2e-9; all weightings stay finite for x0 and v outputs in float32
    sched = LogSNRSchedule("cosine")
    x0, noise = torch.ones(2, 3), torch.full((2, 3), -1.0)
    t = torch.tensor([0.0, 1.0], dtype=f64)
    for prediction in ("x0", "v"):
        for weighting in WEIGHTINGS:
            proc = GaussianProcess(sched, prediction=prediction, weighting=weighting)
            loss = proc.training_losses(FixedOutput(torch.zeros(2, 3)), x0, t=t, noise=noise)
            assert torch.all(torch.isfinite(loss)), (prediction, weighting)


# --- kl loss ------------------------------------------------------------------------------------


def test_kl_loss_equals_analytic_gaussian_kl():
    g = gen(5)
    T = 20
    betas = linear_betas(T, 1e-3, 0.2)
    sched = DiscreteSchedule.from_betas(betas)
    proc = GaussianProcess(sched, prediction="x0", loss="kl", variance="fixed_large")
    assert proc.kl_steps == T
    B, D = 4, 6
    x0 = torch.rand(B, D, generator=g, dtype=f64) * 2 - 1
    noise = torch.randn(B, D, generator=g, dtype=f64)
    x_hat = x0 + 0.1 * torch.randn(B, D, generator=g, dtype=f64)
    n = torch.tensor([3, 7, 12, 19])  # table indices of t; s is the previous entry
    t = (n.double() + 0.6) / T  # off-grid: snapped up to (n + 1) / T
    loss = proc.training_losses(FixedOutput(x_hat), x0, t=t, noise=noise)
    # DDPM (Ho et al. 2020, eqs. 6-7) in table terms
    abar = sched.alphas_cumprod
    ab_t, ab_s, b_t = abar[n], abar[n - 1], betas[n]
    z = ab_t.sqrt()[:, None] * x0 + (1 - ab_t).sqrt()[:, None] * noise
    c_x = (ab_s.sqrt() * b_t / (1 - ab_t))[:, None]
    c_z = ((1 - b_t).sqrt() * (1 - ab_s) / (1 - ab_t))[:, None]
    var_q = ((1 - ab_s) / (1 - ab_t) * b_t)[:, None].expand(B, D)
    q = torch.distributions.Normal(c_x * x0 + c_z * z, var_q.sqrt())
    p = torch.distributions.Normal(c_x * x_hat + c_z * z, b_t.sqrt()[:, None].expand(B, D))
    ref = torch.distributions.kl_divergence(q, p).mean(dim=1) / math.log(2)
    assert torch.allclose(loss, ref, rtol=1e-8)
    # normal_kl is that same formula
    assert torch.allclose(normal_kl(q.mean, q.scale.log() * 2, p.mean, p.scale.log() * 2),
                          torch.distributions.kl_divergence(q, p), rtol=1e-10)


def test_kl_loss_at_s_zero_is_discretized_decoder_nll():
    g = gen(6)
    sched = LogSNRSchedule("cosine", logsnr_min=-10.0, logsnr_max=6.0)
    N = 10
    proc = GaussianProcess(sched, prediction="x0", loss="kl", kl_steps=N)
    x0 = (torch.randint(0, 256, (3, 8), generator=g).double() / 127.5 - 1).clamp(-1, 1)
    x0[0, :2] = torch.tensor([-1.0, 1.0])  # hit both edge bins
    x_hat = x0 + 0.02 * torch.randn(3, 8, generator=g, dtype=f64)
    t = torch.full((3,), 0.05, dtype=f64)  # snaps to t = 1/N, s = 0
    loss = proc.training_losses(FixedOutput(x_hat), x0, t=t, noise=torch.randn(3, 8, generator=g, dtype=f64))
    lt, ls = sched.logsnr(torch.tensor(1 / N, dtype=f64)), sched.logsnr(torch.tensor(0.0, dtype=f64))
    std = (torch.expm1(lt - ls).neg() * torch.sigmoid(-ls)).sqrt()  # fixed_small posterior std
    normal = torch.distributions.Normal(x_hat, std)
    hi = torch.where(x0 > 0.999, torch.ones_like(x0), normal.cdf(x0 + 1 / 255))
    lo = torch.where(x0 < -0.999, torch.zeros_like(x0), normal.cdf(x0 - 1 / 255))
    ref = -torch.log(hi - lo).mean(dim=1) / math.log(2)
    assert torch.allclose(loss, ref, rtol=1e-6)
    # the log-space evaluation survives scales where the plain CDF difference underflows
    far = discretized_gaussian_log_likelihood(torch.tensor([0.0]), torch.tensor([0.5]), torch.tensor([math.log(1e-2)]))
    assert torch.isfinite(far).all() and far.item() < -1000


def test_prior_bpd():
    sched = LogSNRSchedule("cosine", logsnr_min=-4.0)
    proc = GaussianProcess(sched)
    x0 = torch.tensor([[1.0, -1.0, 0.5]], dtype=f64)
    a2 = torch.sigmoid(torch.tensor(-4.0, dtype=f64))
    ref = 0.5 * (-1 - torch.log(1 - a2) + (1 - a2) + a2 * x0**2).mean() / math.log(2)
    assert proc.prior_bpd(x0).item() == pytest.approx(ref.item(), rel=1e-10)
    assert GaussianProcess(LogSNRSchedule("cosine")).prior_bpd(x0).item() < 1e-8


# --- sampling of t, conditioning, determinism, training --------------------------------------


def test_sample_t_grid_and_continuous():
    disc = GaussianProcess(DiscreteSchedule.from_betas(linear_betas(50)))
    assert disc.train_steps == 50
    t = disc.sample_t(4000, generator=gen())
    n = t * 50 - 1
    assert t.dtype == f64 and torch.allclose(n, n.round(), atol=1e-9) and n.min() == 0 and n.max() == 49
    cont = GaussianProcess(LogSNRSchedule("cosine"))
    assert cont.train_steps == 0
    tc = cont.sample_t(4000, generator=gen())
    assert tc.min() > 0 and tc.max() <= 1 and len(tc.unique()) == 4000
    t10 = GaussianProcess(LogSNRSchedule("cosine"), train_steps=10).sample_t(100, generator=gen())
    assert torch.allclose(t10 * 10, (t10 * 10).round(), atol=1e-12) and t10.min() >= 0.1


@pytest.mark.parametrize("p_uncond", [0.0, 1.0])
def test_condition_dropout_happens_before_the_forward_pass(p_uncond):
    net = TinyClassNet()
    proc = GaussianProcess(LogSNRSchedule("cosine"), prediction="v", p_uncond=p_uncond)
    labels = torch.tensor([0, 1, 2, 1, 0, 2, 2, 1])
    proc.training_losses(net, torch.randn(8, 4, generator=gen()), {"class_labels": labels}, generator=gen(1))
    (seen,) = net.seen
    if p_uncond == 1.0:
        assert torch.all(seen == -1)
    else:
        assert torch.equal(seen, labels)


def test_condition_dropout_rate_and_gradient_reaches_null_embedding():
    net = TinyClassNet()
    proc = GaussianProcess(LogSNRSchedule("cosine"), p_uncond=0.25)
    labels = torch.arange(4000) % 3
    loss = proc.training_losses(net, torch.randn(4000, 4, generator=gen()), {"class_labels": labels}, generator=gen(2))
    dropped = net.seen[0] == -1
    assert 0.22 < dropped.float().mean().item() < 0.28
    assert torch.equal(net.seen[0][~dropped], labels[~dropped])
    loss.mean().backward()
    assert net.emb.weight.grad[0].abs().sum() > 0  # the null class (row 0) is trained


def test_training_losses_deterministic_given_generator():
    net = TinyClassNet()
    x0 = torch.randn(16, 4, generator=gen(7))
    cond = {"class_labels": torch.arange(16) % 3}
    for sched in (LogSNRSchedule("cosine"), DiscreteSchedule.from_betas(linear_betas(100)), VPSDESchedule()):
        proc = GaussianProcess(sched, prediction="eps", weighting="snr", p_uncond=0.5)
        a = proc.training_losses(net, x0, cond, generator=gen(3))
        b = proc.training_losses(net, x0, cond, generator=gen(3))
        c = proc.training_losses(net, x0, cond, generator=gen(4))
        assert torch.equal(a, b) and not torch.allclose(a, c)
        assert torch.equal(net.seen[-3], net.seen[-2])


def test_network_receives_net_time():
    sched = DiscreteSchedule.from_betas(linear_betas(100))
    net = FixedOutput(torch.zeros(3, 2))
    t = sched.t_from_index(torch.tensor([0, 41, 99]))
    GaussianProcess(sched).training_losses(net, torch.zeros(3, 2), t=t)
    assert net.calls[0][1].dtype == torch.float32 and net.calls[0][1].tolist() == [0.0, 41.0, 99.0]


TOY_POINTS = torch.tensor([-0.5, 0.7])


@pytest.mark.parametrize("prediction,weighting", [("eps", "snr"), ("x0", "constant")])
def test_tiny_mlp_training_approaches_the_bayes_optimal_loss(prediction, weighting):
    torch.manual_seed(0)
    sched = LogSNRSchedule("cosine", -10.0, 10.0)
    net = nn.Sequential(nn.Linear(2, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 1))
    model = lambda z, t: net(torch.cat([z, t[:, None] / 1000], dim=1))  # noqa: E731

    def bayes_x0(z, net_t):  # E[x | z_t] for data uniform on TOY_POINTS
        a, s = sched.alpha_sigma(net_t.double() / 1000)
        logw = -((z.double() - a[:, None] * TOY_POINTS) ** 2) / (2 * s[:, None] ** 2)
        return (torch.softmax(logw, dim=1) * TOY_POINTS).sum(1, keepdim=True).float()

    g = gen(8)
    data = lambda n: TOY_POINTS[(torch.rand(n, 1, generator=g) < 0.5).long()]  # noqa: E731
    x_eval = data(4096)

    def eval_loss(proc, m):  # same t and noise for every evaluation
        with torch.no_grad():
            return proc.training_losses(m, x_eval, generator=gen(99)).mean().item()

    proc = GaussianProcess(sched, prediction=prediction, weighting=weighting)
    best = eval_loss(GaussianProcess(sched, prediction="x0", weighting=weighting), bayes_x0)
    before = eval_loss(proc, model)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(150):
        loss = proc.training_losses(model, data(128), generator=g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss(proc, model)
    # the excess over the irreducible (Bayes) loss shrinks by more than half
    assert after - best < 0.5 * (before - best)


def test_constructor_errors_are_one_line():
    s = LogSNRSchedule("cosine")
    bad = [
        (dict(prediction="score"), "eps, x0, v, both"),
        (dict(weighting="karras"), "constant, snr, truncated_snr, alpha2, min_snr"),
        (dict(loss="l1"), "mse, kl"),
        (dict(variance="learned"), "fixed_small"),
        (dict(p_uncond=1.5), "p_uncond"),
        (dict(train_steps=-1), "train_steps"),
        (dict(loss="kl"), "kl_steps"),
        (dict(loss="kl", kl_steps=10, weighting="snr"), "weighting"),
    ]
    for kwargs, msg in bad:
        with pytest.raises(ValueError, match=msg) as e:
            GaussianProcess(s, **kwargs)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="NoiseSchedule"):
        GaussianProcess("cosine")
    with pytest.raises(ValueError, match="noise has shape"):
        GaussianProcess(s).training_losses(FixedOutput(torch.zeros(2, 3)), torch.zeros(2, 3), noise=torch.zeros(2, 4))
