"""One config base and one registry pattern for every buildable component: networks, codecs, context encoders.

A component is an nn.Module built from a JSON-friendly config dataclass whose `type_name` tags it:

    @NETS.register
    class MyNet(nn.Module):
        config_class = MyNetConfig          # a ComponentConfig subclass with type_name = "my_net"

    NETS.build({"type": "my_net", "width": 64})

Registries accept registrations from anywhere (a plug-in module or a test), which is what lets a new
modality arrive as new files only.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable, ClassVar, Generic, Iterator, TypeVar

__all__ = ["ComponentConfig", "Registry"]

C = TypeVar("C", bound="ComponentConfig")
T = TypeVar("T")


@dataclasses.dataclass
class ComponentConfig:
    """Base of component configs: plain fields, JSON-friendly (tuples become lists), unknown keys rejected."""

    type_name: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        """Fields as a JSON-friendly dict, without the "type" tag (registries add it)."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in dataclasses.fields(self)}

    def to_spec(self) -> dict[str, Any]:
        """The config as a tagged dict {"type": type_name, **fields}: what registries build from."""
        return {"type": self.type_name, **self.to_dict()}

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any]) -> C:
        """Build from a dict; unknown keys raise; a "type" key must name this config's component."""
        d = dict(d)
        kind = d.pop("type", cls.type_name)
        if kind != cls.type_name:
            raise ValueError(f"config has type {kind!r} but {cls.__name__} builds {cls.type_name!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} key {unknown[0]!r}; valid keys: {', '.join(sorted(names))}")
        hints = typing.get_type_hints(cls)
        for k, v in d.items():  # JSON has no tuples: restore them where the field is a tuple
            if isinstance(v, list) and _is_tuple(hints.get(k)):
                d[k] = tuple(tuple(x) if isinstance(x, list) else x for x in v)
        return cls(**d)

    def replace(self: C, **overrides: Any) -> C:
        """A copy with some fields changed (unknown names raise like from_dict)."""
        return type(self).from_dict({**self.to_dict(), **overrides})


def _is_tuple(tp: Any) -> bool:
    if tp is None:
        return False
    if tp is tuple or typing.get_origin(tp) is tuple:
        return True
    return any(_is_tuple(a) for a in typing.get_args(tp) if a is not type(None))


class Registry(Generic[T]):
    """Named builders of one kind of component ("network", "codec", "context encoder", ...).

    `register` takes a class with a `config_class` (registered under its config's type_name) or, with a
    name, any callable `(spec: dict) -> component`. `build(spec)` accepts a tagged dict or a config object.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Any] = {}

    def register(self, obj: Any = None, *, name: str | None = None) -> Any:
        """Register `obj` (decorator form too: `@REG.register` or `@REG.register(name="x")`)."""
        if obj is None:
            return lambda o: self.register(o, name=name)
        key = name or getattr(getattr(obj, "config_class", None), "type_name", None)
        if not key:
            raise ValueError(f"cannot register {obj!r} as a {self.kind}: give name= or a config_class with a type_name")
        if key in self._items and self._items[key] is not obj:
            raise ValueError(f"a {self.kind} named {key!r} is already registered ({self._items[key]!r})")
        self._items[key] = obj
        return obj

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> Any:
        """The registered class or builder; a one-line error listing the choices when unknown."""
        if name not in self._items:
            raise ValueError(f"unknown {self.kind} type {name!r}; choose one of {', '.join(self.names()) or '(none)'}")
        return self._items[name]

    def config_of(self, spec: dict[str, Any] | ComponentConfig) -> ComponentConfig | dict[str, Any]:
        """The config object of a spec (a class with config_class), else the dict unchanged."""
        if isinstance(spec, ComponentConfig):
            return spec
        if not isinstance(spec, dict) or "type" not in spec:
            raise ValueError(f"a {self.kind} spec must be a mapping with a 'type' ({', '.join(self.names())}), got {spec!r}")
        obj = self.get(spec["type"])
        cc = getattr(obj, "config_class", None)
        return cc.from_dict(spec) if cc is not None else spec

    def build(self, spec: dict[str, Any] | ComponentConfig, **kwargs: Any) -> T:
        """Build a component from a tagged dict or a config object."""
        cfg = self.config_of(spec)
        name = cfg.type_name if isinstance(cfg, ComponentConfig) else cfg["type"]
        builder: Callable[..., T] = self.get(name)
        return builder(cfg, **kwargs)
