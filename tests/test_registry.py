import pytest
import torch

import tessera
from tessera.models import register_model


def test_unknown_name_lists_close_matches():
    names = tessera.list_models()
    if not names:
        pytest.skip("no model registered")
    typo = names[0][:-1] + "x"
    with pytest.raises(ValueError, match="Did you mean") as err:
        tessera.create_model(typo)
    assert names[0] in str(err.value)


def test_unknown_name_without_matches():
    with pytest.raises(ValueError, match="unknown model 'zzzz'"):
        tessera.create_model("zzzz")


def test_list_models_pattern_and_order():
    everything = tessera.list_models()
    assert everything == sorted(everything)
    assert tessera.list_models("no_such_family_*") == []
    swin = tessera.list_models("swin_*")
    assert all(n.startswith("swin_") for n in swin)


def test_a_name_cannot_be_registered_twice():
    names = tessera.list_models()
    if not names:
        pytest.skip("no model registered")
    with pytest.raises(ValueError, match="twice"):
        register_model(names[0])(lambda **kw: None)


def test_kinds_filter_and_unknown_kind():
    assert tessera.list_models("unet_*", kind="denoiser") == ["unet_ddpm_cifar10", "unet_digits"]
    assert "vit_base_patch16_224" in tessera.list_models(kind="encoder")
    assert "unet_digits" not in tessera.list_models(kind="classifier")
    with pytest.raises(ValueError, match="unknown kind"):
        tessera.list_models(kind="tokeniser")
    with pytest.raises(ValueError, match="unknown kind"):
        register_model("never_registered_x", kind="tokeniser")


FAMILY = '''
import torch
from dataclasses import dataclass
from tessera.core import TesseraModel, register_model, replace_config


@dataclass(frozen=True)
class QuadConfig:
    dim: int = 2


class Quadratic(TesseraModel):
    def __init__(self, config):
        super().__init__(config)
        self.scale = torch.nn.Parameter(torch.ones(config.dim))

    def example_inputs(self, batch_size=2):
        return (torch.randn(batch_size, self.config.dim),)

    def energy(self, x):
        return 0.5 * (self.scale * x * x).sum(-1)

    def forward(self, x):
        return self.energy(x)


@register_model("plugin_quadratic_energy", kind="energy")
def plugin_quadratic_energy(**kw) -> Quadratic:
    return Quadratic(replace_config(QuadConfig(), **kw))
'''

COMMAND = '''
def hello(argv):
    """say hello"""
    print("hello", *argv)
    return 0


COMMANDS = {"plugin-hello": hello}
'''


def test_a_new_family_and_command_plug_in_by_adding_files_only(tmp_path, monkeypatch, capsys):
    """A family is a package under tessera/, a command a module under tessera/cli/: no list is edited."""
    import tessera.cli
    import tessera.core.registry as registry

    pkg = tmp_path / "tessera_ext"
    (pkg / "plugin_family").mkdir(parents=True)
    (pkg / "plugin_family" / "__init__.py").write_text(FAMILY)
    (tmp_path / "cli_ext").mkdir()
    (tmp_path / "cli_ext" / "plugin_hello.py").write_text(COMMAND)
    monkeypatch.setattr(tessera, "__path__", [*tessera.__path__, str(pkg)])
    monkeypatch.setattr(tessera.cli, "__path__", [*tessera.cli.__path__, str(tmp_path / "cli_ext")])
    monkeypatch.setattr(registry, "_families_loaded", False)
    monkeypatch.setattr(registry, "_ENTRIES", dict(registry._ENTRIES))
    assert "plugin_quadratic_energy" in tessera.list_models(kind="energy")
    model = tessera.create_model("plugin_quadratic_energy", dim=3)
    assert model.energy(torch.ones(4, 3)).shape == (4,)
    assert tessera.cli.main(["plugin-hello", "world"]) == 0
    assert "hello world" in capsys.readouterr().out
