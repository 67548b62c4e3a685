"""The multi-flow foundation's small pieces: registries, flows, null conditions, parameter groups."""

from __future__ import annotations

import pytest
import torch

from versadiff.component import ComponentConfig, Registry
from versadiff.conditioning import drop_condition, null_condition
from versadiff.flows import FLOWS, flow_entries
from versadiff.nets import build_net
from versadiff.train.optim import param_groups


def test_registry_builds_by_type_and_names_choices():
    from dataclasses import dataclass

    @dataclass
    class WidgetConfig(ComponentConfig):
        type_name = "widget"
        size: int = 2
        dims: tuple = (1, 2)

    reg: Registry = Registry("widget")

    @reg.register
    class Widget:
        config_class = WidgetConfig

        def __init__(self, config):
            self.config = config

    w = reg.build({"type": "widget", "size": 5, "dims": [3, 4]})
    assert w.config.size == 5 and w.config.dims == (3, 4)  # JSON lists come back as the annotated tuples
    assert reg.build(w.config.replace(size=7)).config.size == 7
    with pytest.raises(ValueError, match="unknown widget type 'gadget'; choose one of widget"):
        reg.build({"type": "gadget"})
    with pytest.raises(ValueError, match="unknown WidgetConfig key 'colour'"):
        reg.build({"type": "widget", "colour": 1})
    with pytest.raises(ValueError, match="already registered"):
        reg.register(type("Other", (), {"config_class": WidgetConfig}))


def test_flow_entries():
    assert [(f.name, w) for f, w in flow_entries(["text-to-image", {"name": "image-to-text", "weight": 0.5}])] == [
        ("text-to-image", 1.0), ("image-to-text", 0.5)]
    assert FLOWS.get("image-to-text").null == "black" and FLOWS.get("image-variation").null == "zeros"
    with pytest.raises(ValueError, match="unknown flow type 'text-to-music'"):
        flow_entries(["text-to-music"])
    with pytest.raises(ValueError, match="weight must be a finite number > 0"):
        flow_entries([{"name": "text-to-image", "weight": float("nan")}])
    with pytest.raises(ValueError, match="lists a flow twice"):
        flow_entries(["text-to-image", "text-to-image"])


def test_null_contexts_come_from_the_caller_not_zeros():
    ctx = torch.ones(3, 2, 4)
    mask = torch.tensor([True, False, True])
    null = torch.full((3, 2, 4), 7.0)  # e.g. the encoding of ""
    out = drop_condition({"context": ctx, "data_stream": "image"}, mask, {"context": null})
    assert out["data_stream"] == "image"
    assert torch.equal(out["context"][0], null[0]) and torch.equal(out["context"][1], ctx[1])
    with pytest.raises(ValueError, match="no null value for condition 'context'"):
        drop_condition({"context": ctx}, mask)
    # class labels have a universal null, -1
    assert null_condition({"class_labels": torch.tensor([4, 5])})["class_labels"].tolist() == [-1, -1]


def test_param_groups_split_by_first_matching_rule():
    net = build_net({"preset": "unet_tiny", "base_channels": 16, "norm_groups": 8, "num_classes": 3})
    groups, mults = param_groups(net, [{"match": r"^time_mlp\.", "lr_mult": 0.1},
                                       {"match": r"^down\.", "lr_mult": 0.5, "grad_mult": 0.2}], lr=1e-3)
    assert [g["lr"] for g in groups] == pytest.approx([1e-4, 5e-4, 1e-3])
    n_time = sum(1 for n, _ in net.named_parameters() if n.startswith("time_mlp."))
    assert len(groups[0]["params"]) == n_time and len(mults) == 1 and mults[0][1] == 0.2
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))
    with pytest.raises(ValueError, match="matches no parameter"):
        param_groups(net, [{"match": "^nothing"}], lr=1e-3)


def test_trainer_applies_gradient_multipliers(tmp_path, one_thread):
    """With grad_mult 0 on a group and plain SGD-like steps impossible to distinguish otherwise, the group's
    weights must not move while the others do."""
    from versadiff.config import load_config
    from versadiff.train.trainer import Trainer

    cfg = load_config("shapes_unet_tiny", ["data.size=16", "train.batch_size=8", "train.max_steps=2",
                                           "train.mixed_precision=no", "train.log_every=1", "model.base_channels=16", "model.norm_groups=8",
                                           "train.param_groups=[{match: '^time_mlp\\.', grad_mult: 0.0}]"])
    trainer = Trainer(cfg, out=tmp_path / "run", quiet=True)
    before = {n: p.detach().clone() for n, p in trainer.net.named_parameters()}
    trainer.run(until=2)
    moved = {n for n, p in trainer.net.named_parameters() if not torch.equal(p, before[n])}
    assert moved and not any(n.startswith("time_mlp.") for n in moved)
