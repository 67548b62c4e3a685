"""diffusers scheduler configs -> versadiff (schedule, sampler, options, prediction) and back, checked against
diffusers' own schedulers built from the same config: the same alpha_bar table (bit for bit), the same
timestep grid, and the same sampling trajectory (every intermediate state) on an exact denoiser for
Gaussian data, to 1e-5 relative."""

from __future__ import annotations

import json
import logging
import math
import warnings

import pytest
import torch

from versadiff.convert.schedulers import (
    SCHEDULER_CLASSES,
    from_diffusers_scheduler_config,
    to_diffusers_scheduler_config,
)
from versadiff.denoiser import Denoiser
from versadiff.processes.schedules import build_schedule
from versadiff.samplers import PerSampleNoise, sample

from extras import require_extra  # noqa: E402

diffusers = require_extra("diffusers")  # broken fails loudly; missing skips with the reason (fails under CI)
logging.getLogger("diffusers").setLevel(logging.ERROR)  # "config attributes ... will be ignored" for shared configs

TOL = 1e-5
SHAPE = (3, 4, 4)
MU = torch.tensor([0.5, -0.3, 0.1]).reshape(1, 3, 1, 1)
STD = torch.tensor([0.7, 0.4, 1.2]).reshape(1, 3, 1, 1)

SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
SD_SHARED = {**SD, "clip_sample": False, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
             "trained_betas": None, "_diffusers_version": "0.19.0"}  # fields SD / SDXL configs carry for every class


def gaussian_net(schedule, prediction: str):
    """The exact network for x ~ N(MU, STD^2) per channel, on the diffusers timestep value (an index,
    fractional for Euler grids): x0 = E[x | z_t], eps = (z - alpha x0) / sigma, v = alpha eps - sigma x0."""
    T = schedule.num_steps

    def net(x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        t = ((torch.as_tensor(timestep).double().reshape(-1) + 1) / T).clamp(0, 1).expand(x.shape[0])
        a, s = (v.reshape(-1, 1, 1, 1).float() for v in schedule.alpha_sigma(t))
        x0 = MU + a * STD**2 / (a**2 * STD**2 + s**2) * (x - a * MU)
        if prediction == "x0":
            return x0
        eps = (x - a * x0) / s
        return eps if prediction == "eps" else a * eps - s * x0

    return net


def diffusers_run(cfg: dict, n: int, x: torch.Tensor, net, seed: int | None):
    """diffusers' loop as its pipelines run it; returns (VP states before each step, final VP state, timesteps)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = getattr(diffusers, cfg["_class_name"]).from_config(cfg)
    s.set_timesteps(n)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    if gen is not None:
        assert torch.equal(torch.randn(x.shape, generator=gen), x)  # our PerSampleNoise start, then its stream
    ve = hasattr(s, "sigmas") and cfg["_class_name"] != "DPMSolverMultistepScheduler"
    sample_ = x * (s.sigmas[0] ** 2 + 1) ** 0.5 if ve else x.clone()
    states, times = [], []
    for i, t in enumerate(s.timesteps):
        first = getattr(s, "state_in_first_order", True)
        if first:
            sig = float(s.sigmas[s.step_index if s.step_index is not None else 0]) if ve else 0.0
            states.append(sample_ / (1 + sig**2) ** 0.5)
            times.append(float(t))
        out = net(s.scale_model_input(sample_, t), t)
        kw = {"generator": gen} if cfg["_class_name"] in ("DDPMScheduler", "EulerAncestralDiscreteScheduler") else {}
        sample_ = s.step(out, t, sample_, **kw).prev_sample
    final = sample_ / (1 + float(s.sigmas[-1]) ** 2) ** 0.5 if ve else sample_
    return states, final, times, s


# (id, config, steps); each config only names what differs from the class defaults, as real configs do
CASES = [
    ("ddim-sd", {"_class_name": "DDIMScheduler", **SD_SHARED}, 13),
    ("ddim-trailing-v-zero-snr", {"_class_name": "DDIMScheduler", **SD, "clip_sample": False, "timestep_spacing": "trailing",
                                  "prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "steps_offset": 1}, 30),
    ("ddim-linspace-cosine", {"_class_name": "DDIMScheduler", "beta_schedule": "squaredcos_cap_v2", "clip_sample": False,
                              "timestep_spacing": "linspace"}, 7),
    ("ddim-trained-betas-x0", {"_class_name": "DDIMScheduler", "num_train_timesteps": 200, "clip_sample": False,
                               "trained_betas": torch.linspace(5e-4, 0.06, 200).tolist(), "prediction_type": "sample",
                               "timestep_spacing": "trailing"}, 13),
    ("ddpm-default-clipped", {"_class_name": "DDPMScheduler"}, 13),
    ("ddpm-large-linspace", {"_class_name": "DDPMScheduler", "variance_type": "fixed_large", "clip_sample": False,
                             "timestep_spacing": "linspace"}, 30),
    ("ddpm-small-log-trailing-v", {"_class_name": "DDPMScheduler", "variance_type": "fixed_small_log", "clip_sample": False,
                                   "timestep_spacing": "trailing", "prediction_type": "v_prediction"}, 7),
    ("dpm-sd", {"_class_name": "DPMSolverMultistepScheduler", **SD_SHARED, "steps_offset": 0}, 13),
    ("dpm-leading-order3", {"_class_name": "DPMSolverMultistepScheduler", **SD_SHARED, "timestep_spacing": "leading",
                            "solver_order": 3}, 30),
    ("dpm-noise-form-sigma-min", {"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "dpmsolver",
                                  "final_sigmas_type": "sigma_min", "timestep_spacing": "trailing"}, 7),
    ("dpm-heun-euler-final-v", {"_class_name": "DPMSolverMultistepScheduler", **SD, "solver_type": "heun", "euler_at_final": True,
                                "lower_order_final": False, "prediction_type": "v_prediction"}, 20),
    ("dpm-zero-snr-v-trailing", {"_class_name": "DPMSolverMultistepScheduler", **SD, "rescale_betas_zero_snr": True,
                                 "prediction_type": "v_prediction", "timestep_spacing": "trailing"}, 13),
    ("euler-sdxl", {"_class_name": "EulerDiscreteScheduler", **SD_SHARED, "interpolation_type": "linear",
                    "timestep_spacing": "leading", "use_karras_sigmas": False, "sample_max_value": 1.0}, 13),
    ("euler-linspace", {"_class_name": "EulerDiscreteScheduler"}, 30),
    # starts at sigma = 4096 (alpha_bar_T = 2**-24): diffusers' float32 Euler step cancels ~3 digits there (TOL_LOOSE)
    ("euler-zero-snr-v-trailing", {"_class_name": "EulerDiscreteScheduler", **SD, "rescale_betas_zero_snr": True,
                                   "prediction_type": "v_prediction", "timestep_spacing": "trailing"}, 7),
    ("euler-karras-sigma-min", {"_class_name": "EulerDiscreteScheduler", **SD, "use_karras_sigmas": True,
                                "final_sigmas_type": "sigma_min"}, 13),
    ("euler-ancestral-linspace", {"_class_name": "EulerAncestralDiscreteScheduler"}, 13),
    ("euler-ancestral-sd", {"_class_name": "EulerAncestralDiscreteScheduler", **SD_SHARED, "timestep_spacing": "leading"}, 30),
    ("heun-default", {"_class_name": "HeunDiscreteScheduler"}, 7),
    ("heun-karras-v", {"_class_name": "HeunDiscreteScheduler", "use_karras_sigmas": True, "prediction_type": "v_prediction"}, 13),
    ("heun-clipped-trailing", {"_class_name": "HeunDiscreteScheduler", "clip_sample": True, "clip_sample_range": 0.8,
                               "timestep_spacing": "trailing"}, 13),
]
STOCHASTIC = ("DDPMScheduler", "EulerAncestralDiscreteScheduler")
TOL_LOOSE = {"euler-zero-snr-v-trailing": 1e-4}  # measured 2.8e-5 (2.6e-5 with our state in float64)


def run_both(cfg: dict, n: int):
    conv = from_diffusers_scheduler_config(cfg)
    sched = build_schedule(conv.schedule)
    seeds = [11] if cfg["_class_name"] in STOCHASTIC else [11, 12]
    x = PerSampleNoise(seeds).initial(SHAPE)
    seen: list[dict] = []
    den = Denoiser(gaussian_net(sched, conv.prediction), sched, conv.prediction, clip_x0=conv.clip_x0)
    ours = sample(den, SHAPE, sched, sampler=conv.sampler, steps=n, seeds=seeds, callback=seen.append, **conv.options)
    states, final, times, s = diffusers_run(cfg, n, x, gaussian_net(sched, conv.prediction), seeds[0] if len(seeds) == 1 else None)
    return conv, sched, s, ours, seen, states, final, times


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours.double() - ref.double()).abs().max() / ref.double().abs().max())


@pytest.mark.parametrize("name,cfg,n", CASES, ids=[c[0] for c in CASES])
def test_config_reproduces_diffusers_table_grid_and_trajectory(name, cfg, n):
    tol = TOL_LOOSE.get(name, TOL)
    conv, sched, s, ours, seen, states, final, times = run_both(cfg, n)
    assert torch.equal(sched.alphas_cumprod, s.alphas_cumprod.double())
    assert len(seen) == len(states) == n
    T = sched.num_steps
    ours_t = [c["t"] * T - 1 for c in seen]
    karras_dpm = cfg.get("use_karras_sigmas") and cfg["_class_name"] == "DPMSolverMultistepScheduler"
    grid_tol = 1e-3 if cfg.get("use_karras_sigmas") and not karras_dpm else 1e-6  # Karras: sigma -> t inverses
    assert ours_t == pytest.approx(times, abs=grid_tol)
    for i, (mine, ref) in enumerate(zip(seen, states)):
        assert rel_err(mine["x"], ref) <= tol, f"state {i}"
    assert rel_err(ours, final) <= tol


def test_dpm_karras_matches_up_to_diffusers_timestep_rounding():
    """Non-cosine tables: diffusers rounds the Karras timesteps it feeds the model (see
    test_samplers_diffusers.test_dpm_karras_rounding_is_the_only_difference); the conversion says so."""
    cfg = {"_class_name": "DPMSolverMultistepScheduler", **SD, "use_karras_sigmas": True}
    conv, *_, ours, seen, states, final, times = run_both(cfg, 13)
    assert conv.options["spacing"] == "karras" and any("rounds Karras" in note for note in conv.notes)
    assert [c["t"] * 1000 - 1 for c in seen] == pytest.approx(times, abs=0.5)
    assert 1e-7 < rel_err(ours, final) < 1e-3


def test_pndm_maps_to_the_nearest_equivalent():
    """PNDM (PLMS) has no versadiff twin: same table and grid, trajectory equal to discretisation error."""
    cfg = {"_class_name": "PNDMScheduler", **SD_SHARED}
    conv, sched, s, ours, seen, states, final, times = run_both(cfg, 50)
    assert (conv.sampler, conv.options) == ("dpm", {"spacing": "leading", "steps_offset": 1, "order": 3, "final": "first"})
    assert any("nearest" in note for note in conv.notes) and "clip_sample" in conv.ignored
    assert torch.equal(sched.alphas_cumprod, s.alphas_cumprod.double())
    assert [round(c["t"] * 1000 - 1) for c in seen] == sorted(set(s.timesteps.tolist()), reverse=True)
    assert rel_err(ours, final) < 1e-2


def test_ddim_clip_sample_matches_use_clipped_model_output():
    """clip_sample=True -> Denoiser(clip_x0=...), which re-derives eps from the clipped x0: that is diffusers'
    DDIM with use_clipped_model_output=True (its default keeps the raw eps, which differs while clipping)."""
    cfg = {"_class_name": "DDIMScheduler", "clip_sample_range": 0.3}
    conv = from_diffusers_scheduler_config(cfg)
    assert conv.clip_x0 == 0.3 and conv.notes
    sched = build_schedule(conv.schedule)
    x = PerSampleNoise([1, 2]).initial(SHAPE)
    den = Denoiser(gaussian_net(sched, "eps"), sched, "eps", clip_x0=conv.clip_x0)
    ours = sample(den, SHAPE, sched, sampler=conv.sampler, steps=10, seeds=[1, 2], **conv.options)
    refs = []
    for clipped in (True, False):
        s = diffusers.DDIMScheduler.from_config(cfg)
        s.set_timesteps(10)
        ref = x.clone()
        for t in s.timesteps:
            ref = s.step(gaussian_net(sched, "eps")(ref, t), t, ref, use_clipped_model_output=clipped).prev_sample
        refs.append(ref)
    assert rel_err(ours, refs[0]) <= TOL and rel_err(ours, refs[1]) > 1e-3


def test_stride_quirk_option_of_the_conversion():
    cfg = {"_class_name": "DDIMScheduler", "clip_sample": False, "timestep_spacing": "trailing"}
    assert from_diffusers_scheduler_config(cfg).options["diffusers_stride"] is True
    fixed = from_diffusers_scheduler_config(cfg, diffusers_stride=False)
    assert "diffusers_stride" not in fixed.options
    sched = build_schedule(fixed.schedule)
    den = Denoiser(gaussian_net(sched, "eps"), sched, "eps")
    a = sample(den, SHAPE, sched, sampler="ddim", steps=30, seeds=[0], **fixed.options)
    _, final, *_ = diffusers_run(cfg, 30, PerSampleNoise([0]).initial(SHAPE), gaussian_net(sched, "eps"), None)
    assert rel_err(a, final) > 1e-3  # the corrected DDIM is not diffusers' at 30 trailing steps


def test_initial_noise_scale_difference_is_as_documented():
    """diffusers' Euler-type schedulers start at sigma_max * randn for linspace / trailing (VP std
    sigma_max / sqrt(1 + sigma_max^2)) and at sqrt(1 + sigma_max^2) * randn (VP std 1) for leading."""
    for spacing, sd_scale in (("linspace", 14.6146 / (1 + 14.6146**2) ** 0.5), ("leading", 1.0)):
        s = diffusers.EulerDiscreteScheduler(**SD, timestep_spacing=spacing)
        s.set_timesteps(10)
        smax = float(s.sigmas.max())
        assert float(s.init_noise_sigma) / (1 + smax**2) ** 0.5 == pytest.approx(sd_scale, abs=1e-4)
        notes = from_diffusers_scheduler_config({"_class_name": "EulerDiscreteScheduler", **SD, "timestep_spacing": spacing}).notes
        assert any("sigma_max * randn" in note for note in notes) == (spacing != "leading")


# --- the inverse ---


def _inert(cfg: dict, key: str) -> bool:
    """Fields diffusers ignores under this config (so a round trip may drop or change them)."""
    return (
        (key == "steps_offset" and cfg.get("timestep_spacing", "leading") != "leading")
        or (key in ("beta_start", "beta_end", "beta_schedule") and (cfg.get("beta_schedule") == "squaredcos_cap_v2" or cfg.get("trained_betas")))
        or (key == "clip_sample_range" and not cfg.get("clip_sample"))
        or (key in ("timestep_spacing", "steps_offset") and cfg.get("use_karras_sigmas") and cfg["_class_name"] == "DPMSolverMultistepScheduler")
        or key in ("thresholding", "dynamic_thresholding_ratio", "sample_max_value", "skip_prk_steps")
    )


@pytest.mark.parametrize("cfg", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_round_trip(cfg):
    conv = from_diffusers_scheduler_config(cfg)
    back = to_diffusers_scheduler_config(*conv, clip_x0=conv.clip_x0)
    assert back["_class_name"] == cfg["_class_name"]
    assert set(back) - {"_class_name"} <= set(SCHEDULER_CLASSES[back["_class_name"]])
    again = from_diffusers_scheduler_config(back)
    assert tuple(again) == tuple(conv) and again.clip_x0 == conv.clip_x0
    # and diffusers builds the same scheduler from either config
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c1, c2 = (getattr(diffusers, cfg["_class_name"]).from_config(c).config for c in (cfg, back))
    for k in SCHEDULER_CLASSES[cfg["_class_name"]]:
        if k == "variance_type" and c1[k] == "fixed_small_log":
            assert c2[k] == "fixed_small"  # the same step (diffusers takes exp(0.5 log var) as the std)
        elif not _inert(c1, k):
            assert c1[k] == c2[k] or (isinstance(c1[k], float) and math.isclose(c1[k], c2[k], rel_tol=1e-12)), k


def test_versadiff_native_settings_to_diffusers():
    lin = {"type": "discrete", "betas": "scaled_linear"}  # versadiff's SD default endpoints, written out
    cfg = to_diffusers_scheduler_config(lin, "dpmpp", {"spacing": "trailing", "order": 2}, "v")
    assert cfg["_class_name"] == "DPMSolverMultistepScheduler" and (cfg["beta_start"], cfg["beta_end"]) == (0.00085, 0.012)
    assert cfg["prediction_type"] == "v_prediction" and cfg["final_sigmas_type"] == "zero"
    assert to_diffusers_scheduler_config(lin, "ddim", {"spacing": "trailing", "eta": 1.0}, "eps")["_class_name"] == "EulerAncestralDiscreteScheduler"
    assert to_diffusers_scheduler_config(lin, "heun", {"spacing": "karras"})["use_karras_sigmas"] is True


@pytest.mark.parametrize(
    "args,match",
    [
        (({"type": "logsnr", "kind": "cosine"}, "ddim", {"spacing": "uniform"}), "discrete"),
        (({"type": "discrete"}, "ddim", {"spacing": "uniform"}), "spacing 'uniform'"),
        (({"type": "discrete"}, "ddim", {"spacing": "trailing"}), "diffusers_stride"),
        (({"type": "discrete"}, "ddim", {"spacing": "leading", "eta": 0.5}), "eta"),
        (({"type": "discrete"}, "ddim", {"spacing": "leading"}, "both"), "prediction 'both'"),
        (({"type": "discrete"}, "ddpm", {"spacing": "leading", "variance": "fixed_medium"}), "fixed_medium"),
        (({"type": "discrete"}, "euler", {"spacing": "linspace"}), "diffusers_grid"),
        (({"type": "discrete"}, "euler", {"spacing": "karras", "s_churn": 1.0}), "s_churn"),
        (({"type": "discrete"}, "dpmpp", {"spacing": "leading", "diffusers_grid": "ddim"}), "diffusers_grid"),
        (({"type": "discrete"}, "dpmpp", {"spacing": "trailing", "orderr": 2}), "unknown option 'orderr'"),
        (({"type": "discrete", "rescale_zero_terminal_snr": True}, "euler", {"spacing": "trailing"}), "terminal_alpha_bar"),
        (({"type": "discrete"}, "vq", {}), "sampler 'vq'"),
    ],
)
def test_inverse_rejects_what_has_no_diffusers_equivalent(args, match):
    with pytest.raises(ValueError, match=match) as e:
        to_diffusers_scheduler_config(*args)
    assert "\n" not in str(e.value)


# --- errors and input forms ---


@pytest.mark.parametrize(
    "cfg,field",
    [
        ({"_class_name": "LMSDiscreteScheduler"}, "_class_name"),
        ({"beta_schedule": "linear"}, "_class_name"),
        ({"_class_name": "DDIMScheduler", "timestep_spacng": "trailing"}, "timestep_spacng"),
        ({"_class_name": "DDIMScheduler", "thresholding": True}, "thresholding"),
        ({"_class_name": "DDIMScheduler", "timestep_spacing": "karras"}, "timestep_spacing"),
        ({"_class_name": "DDPMScheduler", "beta_schedule": "sigmoid"}, "beta_schedule"),
        ({"_class_name": "DDPMScheduler", "variance_type": "learned_range"}, "variance_type"),
        ({"_class_name": "DDPMScheduler", "variance_type": "fixed_large_log"}, "variance_type"),
        ({"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver++"}, "algorithm_type"),
        ({"_class_name": "DPMSolverMultistepScheduler", "use_lu_lambdas": True}, "use_lu_lambdas"),
        ({"_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": -5.1}, "lambda_min_clipped"),
        ({"_class_name": "DPMSolverMultistepScheduler", "prediction_type": "flow_prediction"}, "prediction_type"),
        ({"_class_name": "EulerDiscreteScheduler", "timestep_type": "continuous"}, "timestep_type"),
        ({"_class_name": "EulerDiscreteScheduler", "use_exponential_sigmas": True}, "use_exponential_sigmas"),
        ({"_class_name": "EulerDiscreteScheduler", "use_karras_sigmas": True, "timestep_spacing": "leading"}, "timestep_spacing"),
        ({"_class_name": "EulerAncestralDiscreteScheduler", "prediction_type": "sample"}, "prediction_type"),
        ({"_class_name": "DDIMScheduler", "num_train_timesteps": 10, "trained_betas": [0.1] * 5}, "trained_betas"),
    ],
)
def test_unsupported_configs_raise_one_line_naming_the_field(cfg, field):
    with pytest.raises(ValueError, match=field) as e:
        from_diffusers_scheduler_config(cfg)
    assert "\n" not in str(e.value)


def test_reads_files_folders_and_legacy_fields(tmp_path):
    cfg = {"_class_name": "DDPMScheduler", "predict_epsilon": False, "tensor_format": "pt", "clip_sample": False}
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(cfg))
    for where in (tmp_path, tmp_path / "scheduler", tmp_path / "scheduler" / "scheduler_config.json", str(tmp_path)):
        conv = from_diffusers_scheduler_config(where)
        assert conv.prediction == "x0" and conv.sampler == "ddpm" and "tensor_format" in conv.ignored
    schedule, sampler, options, prediction = conv  # unpacks as the 4-tuple
    assert (schedule, sampler, options, prediction) == (conv.schedule, conv.sampler, conv.options, conv.prediction)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no scheduler_config.json"):
        from_diffusers_scheduler_config(tmp_path / "empty")


def test_build_schedule_keys_the_conversion_uses():
    betas = torch.linspace(1e-3, 0.05, 20).tolist()
    explicit = build_schedule({"type": "discrete", "betas": betas, "dtype": "float32"})
    assert explicit.num_steps == 20 and torch.equal(
        explicit.alphas_cumprod, torch.cumprod(1 - torch.tensor(betas, dtype=torch.float32), 0).double()
    )
    floored = build_schedule({"type": "discrete", **{k: v for k, v in SD.items() if k != "beta_schedule"}, "betas": "scaled_linear",
                              "rescale_zero_terminal_snr": True, "terminal_alpha_bar": 2**-24})
    assert float(floored.alphas_cumprod[-1]) == 2**-24 and math.isfinite(floored.logsnr_min)
    for cfg, msg in [
        ({"betas": betas, "num_steps": 10}, "num_steps=10"),
        ({"betas": betas, "beta_end": 0.1}, "beta_end"),
        ({"terminal_alpha_bar": 2**-24}, "rescale_zero_terminal_snr"),
        ({"rescale_zero_terminal_snr": True, "terminal_alpha_bar": 0.5}, "terminal_alpha_bar"),
    ]:
        with pytest.raises(ValueError, match=msg):
            build_schedule({"type": "discrete", **cfg})
