"""Speed options of the sampling loop (versadiff.nets.speed): torch.compile gives the eager samples, a failing
compiler falls back to eager with one warning, wrong inputs still raise, and channels_last changes nothing but
the layout. Real tiny networks, seeded; the speed itself is measured in benchmarks (gpu.py, nets.py)."""

from __future__ import annotations

import warnings

import pytest
import torch

from versadiff.config import load_config
from versadiff.nets import build_net
from versadiff.nets.speed import channels_last, compile_net, compile_options, has_convs
from versadiff.tasks import task_class

TINY = ["model.base_channels=8", "model.norm_groups=4", "model.emb_channels=16", "model.channel_mult=[1,2]",
        "model.attention_resolutions=[16]"]


def _tiny_unet():
    torch.manual_seed(0)
    return build_net({"preset": "unet_tiny", "base_channels": 8, "norm_groups": 4, "emb_channels": 16,
                      "channel_mult": [1, 2], "attention_resolutions": [16], "num_classes": 3,
                      "resblock_resample": False}).eval()


def _tiny_pipeline():
    cfg = load_config("shapes_unet_tiny", TINY + ["model.image_size=16"])
    torch.manual_seed(0)
    info = {"num_classes": 18, "image_shape": [3, 16, 16]}
    return task_class(cfg.task).pipeline(build_net(cfg.model).eval(), cfg, info)


def _broken_backend(gm, example_inputs):  # a torch.compile backend whose compiler fails, as a missing C++ one does
    raise RuntimeError("no C++ compiler found\nsecond line of the compiler's report")


def test_failing_compiler_falls_back_to_eager_with_one_warning(one_thread):
    net = _tiny_unet()
    x, t, y = torch.randn(2, 3, 16, 16), torch.rand(2), torch.tensor([0, 2])
    fast = compile_net(net, backend=_broken_backend)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            first, second = fast(x, t, class_labels=y), fast(x, t, class_labels=y)
            want = net(x, t, class_labels=y)
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1 and "\n" not in msgs[0] and "torch.compile failed" in msgs[0], msgs
    assert "no C++ compiler found" in msgs[0] and not fast.is_compiled
    assert torch.equal(first, want) and torch.equal(second, want)
    assert fast.config is net.config  # the wrapper shows the network's attributes


def test_wrong_inputs_raise_the_networks_own_error_through_the_compiled_call(one_thread):
    fast = compile_net(_tiny_unet(), backend="eager")
    with pytest.raises(ValueError, match=r"UNet expects x of shape \[B, 3, H, W\]"):
        fast(torch.randn(2, 5, 16, 16), torch.rand(2))


def test_inductor_compiled_network_matches_eager(one_thread):
    net = _tiny_unet()
    x, t, y = torch.randn(2, 3, 16, 16), torch.rand(2), torch.tensor([1, -1])
    fast = compile_net(net)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # inductor works on this machine: no fallback
        with torch.no_grad():
            got = fast(x, t, class_labels=y)
    assert fast.is_compiled
    torch.testing.assert_close(got, net(x, t, class_labels=y), rtol=1e-4, atol=1e-5)


def test_generate_with_compile_gives_the_eager_samples(one_thread):
    pipe = _tiny_pipeline()
    kw = dict(class_labels=[0, 5, 17], sampler="dpmpp", steps=3, guidance=1.0)
    eager = pipe.generate([0, 1, 2], **kw)
    compiled = pipe.generate([0, 1, 2], compile="eager", **kw)
    assert pipe._compiled[1] == "eager" and pipe._compiled[2].is_compiled
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-5)
    again = pipe.generate([0, 1, 2], compile="eager", **kw)  # the same compiled wrapper, reused
    assert torch.equal(again, compiled)


def test_compile_argument_names_a_mode_or_a_backend():
    assert compile_options(True) == {"backend": "inductor"}
    assert compile_options("max-autotune") == {"backend": "inductor", "mode": "max-autotune"}
    assert compile_options("eager") == {"backend": "eager"}
    with pytest.raises(ValueError, match="compile must be True, a torch.compile mode"):
        compile_options(3)


def test_generate_with_inductors_max_autotune_mode_gives_the_eager_samples(one_thread):
    pipe = _tiny_pipeline()
    kw = dict(class_labels=[0, 5], sampler="ddim", steps=2, guidance=1.0)
    eager = pipe.generate([0, 1], **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback to eager
        tuned = pipe.generate([0, 1], compile="max-autotune", **kw)
    assert pipe._compiled[1] == "inductor:max-autotune" and pipe._compiled[2].is_compiled
    torch.testing.assert_close(tuned, eager, rtol=1e-4, atol=1e-4)


def test_channels_last_changes_the_layout_not_the_output(one_thread):
    net = _tiny_unet()
    x, t, y = torch.randn(2, 3, 16, 16), torch.rand(2), torch.tensor([0, 1])
    with torch.no_grad():
        want = net(x, t, class_labels=y)
        cl = channels_last(net)
        got = cl(x, t, class_labels=y)
    assert cl is net and has_convs(net)
    assert net.in_conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not net.in_conv.weight.is_contiguous()  # hence: make tensors contiguous before safetensors saves them
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
