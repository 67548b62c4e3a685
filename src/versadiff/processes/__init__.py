"""Forward processes: noise schedules, parameterisations and the Gaussian training objective."""

from versadiff.processes.base import NoiseSchedule, alpha_sigma_from_logsnr, append_dims
from versadiff.processes.gaussian import (
    LOSS_TYPES,
    VARIANCE_TYPES,
    WEIGHTINGS,
    GaussianProcess,
    discretized_gaussian_log_likelihood,
    log1mexp,
    normal_kl,
    posterior,
)
from versadiff.processes.parameterization import PREDICTION_TYPES, target_for, to_x0_eps
from versadiff.processes.schedules import (
    BETA_SCHEDULES,
    LOGSNR_KINDS,
    SCHEDULE_TYPES,
    DiscreteSchedule,
    LogSNRSchedule,
    VPSDESchedule,
    build_schedule,
    cosine_betas,
    karras_sigmas,
    linear_betas,
    rescale_zero_terminal_snr,
    scaled_linear_betas,
)

__all__ = [
    "NoiseSchedule",
    "alpha_sigma_from_logsnr",
    "append_dims",
    "PREDICTION_TYPES",
    "to_x0_eps",
    "target_for",
    "SCHEDULE_TYPES",
    "BETA_SCHEDULES",
    "LOGSNR_KINDS",
    "DiscreteSchedule",
    "LogSNRSchedule",
    "VPSDESchedule",
    "build_schedule",
    "linear_betas",
    "scaled_linear_betas",
    "cosine_betas",
    "rescale_zero_terminal_snr",
    "karras_sigmas",
    "GaussianProcess",
    "posterior",
    "normal_kl",
    "discretized_gaussian_log_likelihood",
    "log1mexp",
    "LOSS_TYPES",
    "VARIANCE_TYPES",
    "WEIGHTINGS",
]
