"""diffusers scheduler configs (`scheduler_config.json`) <-> versadiff schedule specs and samplers.

    schedule, sampler, options, prediction = from_diffusers_scheduler_config("model/scheduler")
    sched = build_schedule(schedule)
    den = Denoiser(net, sched, prediction)            # clip_x0=conv.clip_x0 where the config clips
    x = sample(den, shape, sched, sampler=sampler, steps=30, seeds=seeds, **options)

The schedule spec always spells out what diffusers leaves to class defaults (beta endpoints, float32
tables), because versadiff's names do not carry diffusers' defaults: versadiff's "scaled_linear" alone
means Stable Diffusion's 0.00085 -> 0.012 in float64, diffusers' means its class default 1e-4 -> 0.02 in
float32; versadiff's "leading" is DDIM's leading grid, DPMSolverMultistep's differs (options carry
diffusers_grid="dpm"); diffusers' "epsilon" / "v_prediction" / "sample" are versadiff's "eps" / "v" / "x0".

Class by class (exactness as tested in tests/test_schedulers_convert.py):
  DDIMScheduler              -> "ddim"; exact, including the stride quirk (diffusers_stride, see
                                `samplers.sample_ddim`) unless diffusers_stride=False is asked for.
  DDPMScheduler              -> "ddpm" (fixed_small / fixed_small_log -> fixed_small, fixed_large).
  PNDMScheduler              -> NEAREST EQUIVALENT, not exact: PLMS (4th-order Adams-Bashforth on eps)
                                has no versadiff twin; mapped to "dpm" (DPM-Solver multistep, noise form,
                                order 3) on the same grid and final alpha. Agreement is discretisation-level
                                (about 1e-3 at 50 steps), not float-level.
  DPMSolverMultistepScheduler-> "dpmpp" (dpmsolver++) or "dpm" (dpmsolver); orders 1-3, midpoint / heun,
                                lower_order_final, euler_at_final, final_sigmas_type, Karras sigmas.
  EulerDiscreteScheduler     -> "euler" (discrete timesteps, linear interpolation; Karras sigmas).
  EulerAncestralDiscreteScheduler -> "ddim" with eta=1: its step is exactly DDIM(eta=1) on the same grid.
  HeunDiscreteScheduler      -> "heun".
Unsupported values (thresholding, SDE variants, learned variances, exponential / beta / Lu sigmas, ...)
and unknown classes or fields raise a one-line ValueError naming the field. Fields that belong to other
diffusers schedulers (configs are often shared between classes) are ignored, as diffusers ignores them;
they are listed in `SchedulerConversion.ignored`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = ["SCHEDULER_CLASSES", "SchedulerConversion", "from_diffusers_scheduler_config", "to_diffusers_scheduler_config"]

_COMMON = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
           "trained_betas": None, "prediction_type": "epsilon", "timestep_spacing": "leading", "steps_offset": 0}
_THRESH = {"thresholding": False, "dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.0}
_SIGMA_KINDS = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False}

#: each supported class with its constructor fields and their defaults (diffusers 0.39)
SCHEDULER_CLASSES: dict[str, dict[str, Any]] = {
    "DDIMScheduler": {**_COMMON, **_THRESH, "clip_sample": True, "set_alpha_to_one": True, "clip_sample_range": 1.0,
                      "rescale_betas_zero_snr": False},
    "DDPMScheduler": {**_COMMON, **_THRESH, "variance_type": "fixed_small", "clip_sample": True,
                      "clip_sample_range": 1.0, "rescale_betas_zero_snr": False},
    "PNDMScheduler": {**_COMMON, "skip_prk_steps": False, "set_alpha_to_one": False},
    "DPMSolverMultistepScheduler": {
        **_COMMON, **_THRESH, **_SIGMA_KINDS, "timestep_spacing": "linspace", "solver_order": 2,
        "algorithm_type": "dpmsolver++", "solver_type": "midpoint", "lower_order_final": True, "euler_at_final": False,
        "use_lu_lambdas": False, "use_flow_sigmas": False, "flow_shift": 1.0, "final_sigmas_type": "zero",
        "lambda_min_clipped": -math.inf, "variance_type": None, "rescale_betas_zero_snr": False,
        "use_dynamic_shifting": False, "time_shift_type": "exponential"},
    "EulerDiscreteScheduler": {
        **_COMMON, **_SIGMA_KINDS, "timestep_spacing": "linspace", "interpolation_type": "linear", "sigma_min": None,
        "sigma_max": None, "timestep_type": "discrete", "rescale_betas_zero_snr": False, "final_sigmas_type": "zero"},
    "EulerAncestralDiscreteScheduler": {**_COMMON, "timestep_spacing": "linspace", "rescale_betas_zero_snr": False},
    "HeunDiscreteScheduler": {**_COMMON, **_SIGMA_KINDS, "beta_start": 0.00085, "beta_end": 0.012,
                              "timestep_spacing": "linspace", "clip_sample": False, "clip_sample_range": 1.0},
}

# constructor fields of the other diffusers schedulers (0.39) and legacy fields: ignored when the class lacks them
_FOREIGN_FIELDS = frozenset(
    """algorithm_type alpha_cum_end alpha_cum_start base_image_seq_len base_shift beta_end beta_schedule beta_start
    block_length clip_denoised clip_sample clip_sample_range correct_steps corrector_k corrector_order
    corrector_selection corrector_selection_tau corrector_steps disable_corrector dynamic_thresholding_ratio
    editing_threshold entropy_bound eta euler_at_final final_sigmas_type flow_shift gamma gamma_cum_end
    gamma_cum_start interpolation_type invert_sigmas lambda_min_clipped lower_order_final mask_token_id
    masking_schedule max_image_seq_len max_shift minimal_topk num_inference_steps num_train_timesteps
    num_vec_classes original_inference_steps predict_x0 prediction_type predictor_order rescale_betas_zero_snr rho
    s s_churn s_max s_min s_noise sample_max_value sampling_eps scale_factors scaler scheduler_type set_alpha_to_one
    shift shift_terminal sigma_data sigma_max sigma_min sigma_schedule skip_prk_steps snr snr_shift_scale
    solver_order solver_p solver_type stage_range stages steps_offset stochastic_sampling t_max t_min tau_func
    threshold thresholding time_shift_type timestep_scaling timestep_spacing timestep_type trained_betas
    upscale_mode use_beta_sigmas use_dynamic_shifting use_exponential_sigmas use_flow_sigmas use_karras_sigmas
    use_lu_lambdas variance_type predict_epsilon tensor_format""".split()
)
_META = ("_class_name", "_diffusers_version", "_name_or_path", "_use_default_values")
_PRED_FROM = {"epsilon": "eps", "v_prediction": "v", "sample": "x0", "original_sample": "x0"}
_PRED_TO = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
_ZERO_SNR_FLOOR = 2.0**-24  # diffusers' Euler / EulerAncestral / DPMSolverMultistep replace alpha_bar_T = 0 by this
_FLOOR_CLASSES = ("DPMSolverMultistepScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler")


class SchedulerConversion(tuple):
    """(schedule, sampler, options, prediction): unpacks as a 4-tuple; also carries

    clip_x0: the Denoiser's clip_x0 (clip_sample_range where the config has clip_sample=True, else None);
    notes: one line per approximation or behaviour to know about; ignored: fields of other classes skipped.
    """

    def __new__(cls, schedule: dict, sampler: str, options: dict, prediction: str, clip_x0: float | None = None,
                notes: tuple[str, ...] = (), ignored: tuple[str, ...] = ()) -> "SchedulerConversion":
        self = super().__new__(cls, (schedule, sampler, options, prediction))
        self.clip_x0, self.notes, self.ignored = clip_x0, tuple(notes), tuple(ignored)
        return self

    schedule = property(lambda self: self[0])
    sampler = property(lambda self: self[1])
    options = property(lambda self: self[2])
    prediction = property(lambda self: self[3])

    def __repr__(self) -> str:
        return (f"SchedulerConversion(schedule={self[0]!r}, sampler={self[1]!r}, options={self[2]!r}, "
                f"prediction={self[3]!r}, clip_x0={self.clip_x0!r})")


def _fail(cls: str, field: str, value: Any, why: str) -> ValueError:
    return ValueError(f"{cls}: {field}={value!r} {why}")


def _read(config: dict | str | Path) -> dict:
    if isinstance(config, dict):
        return dict(config)
    path = Path(config)
    if path.is_dir():
        for cand in (path / "scheduler_config.json", path / "scheduler" / "scheduler_config.json"):
            if cand.is_file():
                path = cand
                break
        else:
            raise ValueError(f"no scheduler_config.json in {path} (nor in {path / 'scheduler'})")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read a scheduler config from {path}: {e}".replace("\n", " ")) from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: a scheduler config must be a JSON object")
    return cfg


def _schedule_spec(cls: str, c: dict) -> dict:
    T = c["num_train_timesteps"]
    if isinstance(T, bool) or not isinstance(T, int) or T < 2:
        raise _fail(cls, "num_train_timesteps", T, "must be an int >= 2")
    spec: dict[str, Any] = {"type": "discrete", "num_steps": T, "dtype": "float32"}
    if c["trained_betas"] is not None:
        betas = [float(b) for b in c["trained_betas"]]
        if len(betas) != T:
            raise _fail(cls, "trained_betas", f"<{len(betas)} values>", f"needs num_train_timesteps={T} entries")
        spec["betas"] = betas
    elif c["beta_schedule"] in ("linear", "scaled_linear"):
        spec.update(betas=c["beta_schedule"], beta_start=float(c["beta_start"]), beta_end=float(c["beta_end"]))
    elif c["beta_schedule"] == "squaredcos_cap_v2":
        spec["betas"] = "squaredcos_cap_v2"  # GLIDE cosine: s = 0.008, max_beta = 0.999, as versadiff's default
    else:
        raise _fail(cls, "beta_schedule", c["beta_schedule"], "is not supported (linear, scaled_linear, squaredcos_cap_v2)")
    if c.get("rescale_betas_zero_snr"):
        spec["rescale_zero_terminal_snr"] = True
        if cls in _FLOOR_CLASSES:
            spec["terminal_alpha_bar"] = _ZERO_SNR_FLOOR
    return spec


def _prediction(cls: str, c: dict) -> str:
    p = c["prediction_type"]
    ok = ("epsilon", "v_prediction") if cls in ("PNDMScheduler", "EulerAncestralDiscreteScheduler") else tuple(_PRED_FROM)
    if p not in ok or (p == "original_sample" and cls != "EulerDiscreteScheduler"):
        raise _fail(cls, "prediction_type", p, f"is not supported here ({', '.join(k for k in ok if k != 'original_sample')})")
    return _PRED_FROM[p]


def _grid(cls: str, c: dict, family: str) -> dict:
    spacing = c["timestep_spacing"]
    if spacing not in ("leading", "trailing", "linspace"):
        raise _fail(cls, "timestep_spacing", spacing, "is not one of leading, trailing, linspace")
    off = c["steps_offset"]
    if isinstance(off, bool) or not isinstance(off, int) or off < 0:
        raise _fail(cls, "steps_offset", off, "must be an int >= 0")
    opts: dict[str, Any] = {"spacing": spacing}
    if spacing == "leading" and off:  # diffusers applies steps_offset to leading grids only
        opts["steps_offset"] = off
    if family != "ddim" and spacing != "trailing" and not (family == "euler" and spacing == "leading"):
        opts["diffusers_grid"] = family
    return opts


def _reject(cls: str, c: dict, fields: dict[str, Any]) -> None:
    """Raise for any field whose value differs from the one supported value given."""
    for f, ok in fields.items():
        if f in c and c[f] != ok and not (ok is None and c[f] is None):
            raise _fail(cls, f, c[f], f"is not supported by the conversion (only {ok!r})")


def _karras(cls: str, c: dict, opts: dict, notes: list[str]) -> None:
    if sum(bool(c.get(k)) for k in _SIGMA_KINDS) > 1:
        raise _fail(cls, "use_karras_sigmas", c["use_karras_sigmas"], "cannot be combined with exponential / beta sigmas")
    for k in ("use_exponential_sigmas", "use_beta_sigmas"):
        if c.get(k):
            raise _fail(cls, k, c[k], "has no versadiff equivalent (use_karras_sigmas or the spacings do)")
    if not c.get("use_karras_sigmas"):
        return
    if cls in ("EulerDiscreteScheduler", "HeunDiscreteScheduler"):
        # these take the Karras range from the N-step grid of timestep_spacing: the full table only for linspace
        explicit = c.get("sigma_min") is not None and c.get("sigma_max") is not None
        if c["timestep_spacing"] != "linspace" and not explicit:
            raise _fail(cls, "timestep_spacing", c["timestep_spacing"],
                        "with use_karras_sigmas takes the sigma range from the step count; only linspace (or explicit sigma_min / sigma_max) maps")
        for k in ("sigma_min", "sigma_max"):
            if c.get(k) is not None:
                opts[k] = float(c[k])
    opts.pop("steps_offset", None)
    opts.pop("diffusers_grid", None)
    opts["spacing"] = "karras"
    if cls == "DPMSolverMultistepScheduler":
        notes.append("DPMSolverMultistep rounds Karras timesteps to integers for the model (truncates them for "
                     "squaredcos_cap_v2), keeping the unrounded sigmas in the solver; versadiff feeds the fractional "
                     "time of each sigma (about 1e-4 relative)")


def from_diffusers_scheduler_config(config: dict | str | Path, *, diffusers_stride: bool = True) -> SchedulerConversion:
    """Map a diffusers scheduler config (dict, a scheduler_config.json, or a folder holding one, also in
    scheduler/) to (schedule spec for build_schedule, sampler name, sampler options for `sample`, prediction).

    diffusers_stride: reproduce DDIMScheduler's stride quirk (each step goes from index n to n - T // N; see
    samplers.sample_ddim). False gives the corrected DDIM, which steps to the next grid point; both agree on
    leading grids and on trailing grids whose N divides T.
    """
    c = _read(config)
    cls = c.get("_class_name")
    if cls not in SCHEDULER_CLASSES:
        raise ValueError(f"_class_name={cls!r} is not supported; choose one of {', '.join(SCHEDULER_CLASSES)}")
    fields = SCHEDULER_CLASSES[cls]
    ignored = []
    for k in c:
        if k in _META or k in fields:
            continue
        if k not in _FOREIGN_FIELDS:
            raise ValueError(f"{cls}: unknown field {k!r}")
        ignored.append(k)
    if "predict_epsilon" in c and "prediction_type" not in c:  # diffusers' deprecated spelling
        c["prediction_type"] = "epsilon" if c["predict_epsilon"] else "sample"
    c = {**fields, **{k: v for k, v in c.items() if k in fields}}
    notes: list[str] = []
    schedule, prediction = _schedule_spec(cls, c), _prediction(cls, c)
    if c.get("thresholding"):
        raise _fail(cls, "thresholding", True, "(dynamic thresholding) is not supported")
    clip_x0 = float(c["clip_sample_range"]) if c.get("clip_sample") else None

    if cls == "DDIMScheduler":
        sampler, opts = "ddim", _grid(cls, c, "ddim")
        opts["final"] = "clean" if c["set_alpha_to_one"] else "first"
        if diffusers_stride and opts["spacing"] != "leading":
            opts["diffusers_stride"] = True
        if clip_x0 is not None:
            notes.append("clip_sample: versadiff re-derives eps from the clipped x0 (diffusers' "
                         "use_clipped_model_output=True); diffusers' default keeps the raw eps")
    elif cls == "DDPMScheduler":
        v = c["variance_type"]
        if v in ("fixed_large_log", "learned", "learned_range"):
            why = ("makes diffusers' step take the square root of a log-variance (NaN); use fixed_large"
                   if v == "fixed_large_log" else "needs a network that predicts its variance")
            raise _fail(cls, "variance_type", v, why)
        if v not in ("fixed_small", "fixed_small_log", "fixed_large"):
            raise _fail(cls, "variance_type", v, "is not supported")
        sampler, opts = "ddpm", {**_grid(cls, c, "ddim"), "variance": v.replace("_log", "")}
        if v == "fixed_large":
            notes.append("fixed_large: where the last timestep is > 0 (trailing, or steps_offset) diffusers adds "
                         "noise of variance 1 - alpha_bar_t to its final sample; versadiff returns x0")
    elif cls == "PNDMScheduler":
        sampler, opts = "dpm", {**_grid(cls, c, "ddim"), "order": 3}
        opts["final"] = "clean" if c["set_alpha_to_one"] else "first"
        notes.append("PNDMScheduler (PLMS/PRK) has no exact versadiff equivalent: mapped to the nearest, DPM-Solver "
                     "multistep in noise form (order 3) on the same grid; agreement is to discretisation error only")
    elif cls == "DPMSolverMultistepScheduler":
        alg = "dpmsolver++" if c["algorithm_type"] == "deis" else c["algorithm_type"]  # diffusers' own aliases
        if alg not in ("dpmsolver++", "dpmsolver"):
            raise _fail(cls, "algorithm_type", c["algorithm_type"], "is not supported (dpmsolver++, dpmsolver; no SDE variants)")
        st = "midpoint" if c["solver_type"] in ("logrho", "bh1", "bh2") else c["solver_type"]
        if st not in ("midpoint", "heun"):
            raise _fail(cls, "solver_type", c["solver_type"], "is not one of midpoint, heun")
        if c["solver_order"] not in (1, 2, 3):
            raise _fail(cls, "solver_order", c["solver_order"], "must be 1, 2 or 3")
        if c["final_sigmas_type"] not in ("zero", "sigma_min"):
            raise _fail(cls, "final_sigmas_type", c["final_sigmas_type"], "is not one of zero, sigma_min")
        if c["final_sigmas_type"] == "zero" and alg == "dpmsolver":
            raise _fail(cls, "final_sigmas_type", "zero", "is not allowed with algorithm_type='dpmsolver' (diffusers rejects it)")
        if c["lambda_min_clipped"] is not None and c["lambda_min_clipped"] != -math.inf:
            raise _fail(cls, "lambda_min_clipped", c["lambda_min_clipped"], "is not supported (only -inf)")
        _reject(cls, c, {"use_lu_lambdas": False, "use_flow_sigmas": False, "use_dynamic_shifting": False, "variance_type": None})
        sampler = "dpmpp" if alg == "dpmsolver++" else "dpm"
        opts = {**_grid(cls, c, "dpm"), "order": c["solver_order"], "lower_order_final": bool(c["lower_order_final"]),
                "final": "clean" if c["final_sigmas_type"] == "zero" else "first"}
        if st != "midpoint":
            opts["solver_type"] = st
        if c["euler_at_final"]:
            opts["euler_at_final"] = True
        _karras(cls, c, opts, notes)
    elif cls in ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler"):
        _reject(cls, c, {"interpolation_type": "linear", "timestep_type": "discrete"})
        opts = _grid(cls, c, "euler")
        if cls == "EulerDiscreteScheduler":
            sampler = "euler"
            if c["final_sigmas_type"] not in ("zero", "sigma_min"):
                raise _fail(cls, "final_sigmas_type", c["final_sigmas_type"], "is not one of zero, sigma_min")
            if c["final_sigmas_type"] == "sigma_min":
                opts["final"] = "first"
        elif cls == "HeunDiscreteScheduler":
            sampler = "heun"
        else:
            sampler, opts["eta"] = "ddim", 1.0
            notes.append("EulerAncestralDiscreteScheduler's step is exactly DDIM with eta=1 on the same grid")
        if cls != "EulerAncestralDiscreteScheduler":
            _karras(cls, c, opts, notes)
        if opts["spacing"] != "leading":
            notes.append(f"{cls} starts from sigma_max * randn (VP std sigma_max / sqrt(1 + sigma_max^2)) with "
                         f"{opts['spacing']} spacing; versadiff's sample() starts from VP std 1")
    else:  # pragma: no cover - SCHEDULER_CLASSES and this chain are kept in step
        raise AssertionError(cls)
    return SchedulerConversion(schedule, sampler, opts, prediction, clip_x0, notes, ignored)


# --------------------------------------------------------------------------------------------------
# versadiff -> diffusers
# --------------------------------------------------------------------------------------------------

_SAMPLER_OPTIONS = {
    "ddim": {"spacing", "steps_offset", "final", "diffusers_grid", "eta", "diffusers_stride"},
    "ddpm": {"spacing", "steps_offset", "diffusers_grid", "variance"},
    "dpmpp": {"spacing", "steps_offset", "final", "diffusers_grid", "order", "lower_order_final", "solver_type",
              "euler_at_final", "rho", "sigma_min", "sigma_max"},
    "euler": {"spacing", "steps_offset", "final", "diffusers_grid", "rho", "sigma_min", "sigma_max", "s_churn"},
    "heun": {"spacing", "steps_offset", "final", "diffusers_grid", "rho", "sigma_min", "sigma_max", "s_churn"},
}
_SAMPLER_OPTIONS["dpm"] = _SAMPLER_OPTIONS["dpmpp"]


def _not_defined(what: str) -> ValueError:
    return ValueError(f"no equivalent diffusers scheduler config: {what}")


def _betas_fields(schedule: dict) -> dict:
    from versadiff.processes.schedules import _LINEAR_FAMILIES, _SCHEDULE_KEYS

    if not isinstance(schedule, dict) or schedule.get("type") != "discrete":
        raise _not_defined(f"schedule type {schedule.get('type') if isinstance(schedule, dict) else schedule!r} (diffusers needs a discrete beta table)")
    unknown = set(schedule) - _SCHEDULE_KEYS["discrete"]
    if unknown:
        raise ValueError(f"unknown schedule key {sorted(unknown)[0]!r}")
    betas = schedule.get("betas", "linear")
    out: dict[str, Any] = {}
    if isinstance(betas, (list, tuple)):
        out.update(num_train_timesteps=len(betas), trained_betas=[float(b) for b in betas])
    else:
        out["num_train_timesteps"] = int(schedule.get("num_steps", 1000))
        if betas in _LINEAR_FAMILIES:
            d0, d1 = _LINEAR_FAMILIES[betas][1]  # versadiff's own defaults, written out for diffusers
            out.update(beta_schedule=betas, beta_start=float(schedule.get("beta_start", d0)),
                       beta_end=float(schedule.get("beta_end", d1)))
        elif betas in ("cosine", "squaredcos_cap_v2"):
            if float(schedule.get("cosine_s", 0.008)) != 0.008 or float(schedule.get("max_beta", 0.999)) != 0.999:
                raise _not_defined("cosine betas with cosine_s != 0.008 or max_beta != 0.999 (squaredcos_cap_v2 fixes both)")
            out["beta_schedule"] = "squaredcos_cap_v2"
        else:
            raise ValueError(f"unknown betas {betas!r}")
    if schedule.get("rescale_zero_terminal_snr"):
        out["rescale_betas_zero_snr"] = True
    return out


def to_diffusers_scheduler_config(
    schedule: dict, sampler: str, options: dict | None = None, prediction: str = "eps", *, clip_x0: float | None = None
) -> dict:
    """The inverse of `from_diffusers_scheduler_config` where it is well defined: a diffusers config dict
    (with "_class_name") whose scheduler reproduces (schedule spec, sampler, options, prediction).

    Not well defined, hence a ValueError naming the option: non-discrete schedules, spacings diffusers lacks
    (uniform, logsnr), DDIM on trailing / linspace grids without diffusers_stride (diffusers' DDIM cannot step
    to the next grid point there), DDIM with 0 < eta < 1 (eta is a pipeline argument in diffusers), churn,
    fixed_medium variance, the "both" prediction, clipping on DPM / Euler.
    """
    options = dict(options or {})
    if sampler not in _SAMPLER_OPTIONS:
        raise _not_defined(f"sampler {sampler!r}")
    for k in options:
        if k not in _SAMPLER_OPTIONS[sampler]:
            raise ValueError(f"unknown option {k!r} for sampler {sampler!r}")
    if prediction not in _PRED_TO:
        raise _not_defined(f"prediction {prediction!r}")
    cfg = _betas_fields(schedule)
    spacing = options.get("spacing")
    grid = options.get("diffusers_grid", "ddim")
    final = options.get("final", "clean")
    if spacing is None:
        raise _not_defined("options need an explicit 'spacing' (versadiff's defaults are uniform / logsnr / karras)")
    if spacing in ("uniform", "logsnr"):
        raise _not_defined(f"spacing {spacing!r}")
    if spacing == "karras" and sampler in ("ddim", "ddpm"):
        raise _not_defined(f"spacing 'karras' with sampler {sampler!r}")
    if spacing != "karras":
        cfg["timestep_spacing"] = spacing
        if options.get("steps_offset"):
            cfg["steps_offset"] = int(options["steps_offset"])
    elif options.get("rho", 7.0) != 7.0:
        raise _not_defined("rho != 7 (diffusers' Karras sigmas fix rho = 7)")
    cfg["prediction_type"] = _PRED_TO[prediction]

    def done(out: dict) -> dict:
        floor = schedule.get("terminal_alpha_bar")
        if floor is not None and (floor != _ZERO_SNR_FLOOR or out["_class_name"] not in _FLOOR_CLASSES):
            raise _not_defined(f"terminal_alpha_bar={floor!r} with {out['_class_name']} (diffusers' "
                               f"{', '.join(_FLOOR_CLASSES)} set {_ZERO_SNR_FLOOR!r}; the others keep 0)")
        if floor is None and schedule.get("rescale_zero_terminal_snr") and out["_class_name"] in _FLOOR_CLASSES:
            raise _not_defined(f"{out['_class_name']} with rescale_zero_terminal_snr needs terminal_alpha_bar={_ZERO_SNR_FLOOR!r}")
        return out

    def need_grid(family: str) -> None:
        if spacing in ("leading", "linspace") and grid != family and not (family == "euler" and spacing == "leading"):
            raise _not_defined(f"{spacing} spacing with diffusers_grid={grid!r}; this scheduler builds the {family!r} grid")

    def clip_fields() -> dict:
        return {"clip_sample": clip_x0 is not None, **({"clip_sample_range": float(clip_x0)} if clip_x0 is not None else {})}

    if sampler == "ddim":
        eta = float(options.get("eta", 0.0))
        if eta == 1.0 and final == "clean" and not options.get("diffusers_stride") and clip_x0 is None:
            need_grid("euler")
            return done({"_class_name": "EulerAncestralDiscreteScheduler", **cfg})
        if eta != 0.0:
            raise _not_defined(f"eta={eta} (eta is a call argument of diffusers' DDIM pipelines, not a scheduler field)")
        need_grid("ddim")
        if spacing != "leading" and not options.get("diffusers_stride"):
            raise _not_defined(f"DDIM on a {spacing} grid without diffusers_stride=True (diffusers' DDIMScheduler "
                               "steps by T // N, not to the next grid point)")
        return done({"_class_name": "DDIMScheduler", **cfg, "set_alpha_to_one": final == "clean", **clip_fields()})
    if sampler == "ddpm":
        need_grid("ddim")
        variance = options.get("variance", "fixed_small")
        if variance not in ("fixed_small", "fixed_large"):
            raise _not_defined(f"variance {variance!r}")
        return done({"_class_name": "DDPMScheduler", **cfg, "variance_type": variance, **clip_fields()})
    if clip_x0 is not None and sampler != "heun":
        raise _not_defined(f"clip_x0 with sampler {sampler!r} (its diffusers scheduler has no clip_sample)")
    if sampler in ("dpmpp", "dpm"):
        need_grid("dpm")
        if sampler == "dpm" and final == "clean":
            raise _not_defined("sampler 'dpm' with final='clean' (diffusers allows final sigma 0 only for dpmsolver++)")
        if spacing == "karras" and (options.get("sigma_min") is not None or options.get("sigma_max") is not None):
            raise _not_defined("DPM Karras sigmas with sigma_min / sigma_max (diffusers uses the table's range)")
        out = {"_class_name": "DPMSolverMultistepScheduler", **cfg,
               "algorithm_type": "dpmsolver++" if sampler == "dpmpp" else "dpmsolver",
               "solver_order": int(options.get("order", 2)), "solver_type": options.get("solver_type", "midpoint"),
               "lower_order_final": bool(options.get("lower_order_final", True)),
               "euler_at_final": bool(options.get("euler_at_final", False)),
               "final_sigmas_type": "zero" if final == "clean" else "sigma_min"}
        if spacing == "karras":
            out["use_karras_sigmas"] = True
    else:  # euler, heun
        if options.get("s_churn", 0.0):
            raise _not_defined("s_churn (diffusers' Euler takes churn as a step() argument and applies it differently)")
        need_grid("euler")
        if sampler == "heun" and final != "clean":
            raise _not_defined("Heun with final='first' (diffusers' Heun always ends at sigma = 0)")
        out = {"_class_name": "EulerDiscreteScheduler" if sampler == "euler" else "HeunDiscreteScheduler", **cfg}
        if sampler == "euler":
            out["final_sigmas_type"] = "zero" if final == "clean" else "sigma_min"
        else:
            out.update(clip_fields())
        if spacing == "karras":
            out.update(use_karras_sigmas=True, timestep_spacing="linspace")
            for k in ("sigma_min", "sigma_max"):
                if options.get(k) is not None:
                    if sampler == "heun":
                        raise _not_defined(f"Heun Karras sigmas with {k} (HeunDiscreteScheduler has no such field)")
                    out[k] = float(options[k])
    return done(out)
