"""Build networks by registered name or by a user's import path, without editing autounet.

Built-in networks are imported explicitly below (no scanning of the package tree, so what
is available is visible in one place). A value containing ':' is an import path
'pkg.module:ClassName': the class is imported and constructed with the same keyword
arguments as the built-ins (network_plan, in_channels, num_classes, deep_supervision).
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable
from typing import TypeVar

from torch import nn

from autounet.errors import AutounetError
from autounet.networks.residual import ResidualEncoderUNet
from autounet.networks.unet import PlainUNet
from autounet.networks.description import NetworkPlan

log = logging.getLogger(__name__)

NetworkFactory = Callable[..., nn.Module]
F = TypeVar("F", bound=NetworkFactory)

_CONSTRUCTOR_KWARGS = ("network_plan", "in_channels", "num_classes", "deep_supervision")

_REGISTRY: dict[str, NetworkFactory] = {
    PlainUNet.architecture: PlainUNet,
    ResidualEncoderUNet.architecture: ResidualEncoderUNet,
}


def register_network(name: str) -> Callable[[F], F]:
    """Class decorator: make a network buildable as `name` (plans' architecture or --network)."""
    if not name or ":" in name:
        raise ValueError(f"network name '{name}' must be non-empty and contain no ':' (reserved for import paths)")

    def decorator(factory: F) -> F:
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not factory:
            raise ValueError(f"network name '{name}' is already registered to {existing.__qualname__}")
        _REGISTRY[name] = factory
        return factory

    return decorator


def available_networks() -> list[str]:
    """Registered network names, sorted."""
    return sorted(_REGISTRY)


def resolve_network(name_or_path: str) -> NetworkFactory:
    """The class (or factory) for a registered name or a 'pkg.module:ClassName' import path."""
    if ":" in name_or_path:
        return _import_factory(name_or_path)
    try:
        return _REGISTRY[name_or_path]
    except KeyError:
        raise AutounetError(
            f"network '{name_or_path}' is not registered; use one of {available_networks()} "
            f"or an import path 'pkg.module:ClassName'"
        ) from None


def build_network(name_or_path: str, network_plan: NetworkPlan, in_channels: int, num_classes: int,
                  deep_supervision: bool = True) -> nn.Module:
    """Construct the network for a plan; the result follows the networks contract in ARCHITECTURE.md."""
    factory = resolve_network(name_or_path)
    network = factory(network_plan=network_plan, in_channels=in_channels, num_classes=num_classes,
                      deep_supervision=deep_supervision)
    if not isinstance(network, nn.Module):
        raise AutounetError(f"network '{name_or_path}' returned {type(network).__name__}, not a torch.nn.Module")
    if not hasattr(network, "deep_supervision"):
        raise AutounetError(f"network '{name_or_path}' has no 'deep_supervision' attribute; "
                            f"set self.deep_supervision in its constructor (see docs/ARCHITECTURE.md)")
    log.debug("built network %s with %d parameters", name_or_path, sum(p.numel() for p in network.parameters()))
    return network


def _import_factory(path: str) -> NetworkFactory:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr or ":" in attr:
        raise AutounetError(f"network import path '{path}' must look like 'pkg.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AutounetError(f"network '{path}': cannot import module '{module_name}' ({exc}); "
                            f"check the name and that it is on PYTHONPATH") from exc
    except Exception as exc:  # the user's module failed while executing
        raise AutounetError(f"network '{path}': importing '{module_name}' failed with "
                            f"{type(exc).__name__}: {exc}") from exc
    obj: object = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise AutounetError(f"network '{path}': module '{module_name}' has no attribute '{attr}'")
    if not callable(obj):
        raise AutounetError(f"network '{path}': '{attr}' is not a class or function")
    try:
        inspect.signature(obj).bind(network_plan=None, in_channels=1, num_classes=2, deep_supervision=True)
    except TypeError:
        raise AutounetError(f"network '{path}': must accept the keyword arguments "
                            f"{list(_CONSTRUCTOR_KWARGS)}") from None
    except ValueError:  # no introspectable signature (some builtins): let the call decide
        pass
    return obj
