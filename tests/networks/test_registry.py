"""Network registry: built-in names, user import paths, and the errors a user can cause."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from autounet.errors import AutounetError
from autounet.networks import registry
from autounet.networks.registry import available_networks, build_network, register_network, resolve_network
from autounet.networks.residual import ResidualEncoderUNet
from autounet.networks.unet import PlainUNet
from autounet.planners.plans import NetworkPlan

PlanFactory = Callable[..., NetworkPlan]

USER_MODULE = textwrap.dedent('''
    import torch
    from torch import nn


    class TinyNet(nn.Module):
        def __init__(self, network_plan, in_channels, num_classes, deep_supervision=True):
            super().__init__()
            self.deep_supervision = deep_supervision
            self.received = (network_plan.architecture, in_channels, num_classes, deep_supervision)
            self.head = nn.Conv2d(in_channels, num_classes, 1)

        def forward(self, x):
            out = self.head(x)
            return [out] if self.deep_supervision else out


    class WrongSignature(nn.Module):
        def __init__(self, plan):
            super().__init__()


    def not_a_module(network_plan, in_channels, num_classes, deep_supervision):
        return 42


    NOT_CALLABLE = 3
''')


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A user's network module on sys.path, outside autounet; yields its module name."""
    name = "autounet_test_user_networks"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    (tmp_path / "autounet_test_broken.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)
    sys.modules.pop("autounet_test_broken", None)


def test_builtin_networks_are_registered() -> None:
    names = available_networks()
    assert {"plain_unet", "resenc_unet"} <= set(names)
    assert names == sorted(names)
    assert resolve_network("plain_unet") is PlainUNet
    assert resolve_network("resenc_unet") is ResidualEncoderUNet


@pytest.mark.parametrize(("name", "cls"), [("plain_unet", PlainUNet), ("resenc_unet", ResidualEncoderUNet)])
def test_build_by_name(name: str, cls: type[nn.Module], make_plan: PlanFactory) -> None:
    model = build_network(name, make_plan(name, 2), in_channels=1, num_classes=2, deep_supervision=False)
    assert type(model) is cls
    assert model.deep_supervision is False
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 2, 32, 32)


def test_unknown_name_lists_the_registered_networks(make_plan: PlanFactory) -> None:
    with pytest.raises(AutounetError, match=r"network 'unet\+\+' is not registered; use one of \['plain_unet', "):
        build_network("unet++", make_plan("plain_unet", 2), 1, 2)


def test_register_network_decorator(monkeypatch: pytest.MonkeyPatch, make_plan: PlanFactory) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # keep the global registry clean

    @register_network("autounet_test_registered")
    class Registered(PlainUNet):
        pass

    assert "autounet_test_registered" in available_networks()
    assert type(build_network("autounet_test_registered", make_plan("plain_unet", 2), 1, 2)) is Registered
    with pytest.raises(ValueError, match="already registered"):
        register_network("autounet_test_registered")(PlainUNet)
    with pytest.raises(ValueError, match="reserved for import paths"):
        register_network("a:b")


def test_build_from_import_path_passes_the_same_keywords(user_module: str, make_plan: PlanFactory) -> None:
    model = build_network(f"{user_module}:TinyNet", make_plan("plain_unet", 2), in_channels=1, num_classes=4,
                          deep_supervision=False)
    assert model.received == ("plain_unet", 1, 4, False)
    assert model(torch.randn(1, 1, 8, 8)).shape == (1, 4, 8, 8)


@pytest.mark.parametrize(("path", "message"), [
    ("no_such_autounet_module:Net",
     r"network 'no_such_autounet_module:Net': cannot import module 'no_such_autounet_module'"),
    ("{mod}:Missing", r"network '{mod}:Missing': module '{mod}' has no attribute 'Missing'"),
    ("{mod}:NOT_CALLABLE", r"'NOT_CALLABLE' is not a class or function"),
    ("{mod}:WrongSignature", r"must accept the keyword arguments \['network_plan', 'in_channels'"),
    ("{mod}:not_a_module", r"returned int, not a torch.nn.Module"),
    ("autounet_test_broken:Net", r"importing 'autounet_test_broken' failed with RuntimeError: boom at import"),
    ("{mod}:", r"must look like 'pkg.module:ClassName'"),
    (":Net", r"must look like 'pkg.module:ClassName'"),
])
def test_import_path_errors_are_one_line_and_name_the_path(user_module: str, path: str, message: str,
                                                           make_plan: PlanFactory) -> None:
    path = path.format(mod=user_module)
    with pytest.raises(AutounetError, match=message.format(mod=user_module)) as info:
        build_network(path, make_plan("plain_unet", 2), 1, 2)
    assert "\n" not in str(info.value)
