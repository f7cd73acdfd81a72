"""Config values (issue 18): a wrong type or an impossible value is refused naming the field,
the expected type and the value, for every registered model (checked against the config
dataclass's annotations in tessera.core.base, so new families get it too)."""

from __future__ import annotations

import dataclasses
import typing
import warnings

import pytest

import tessera
from tessera.core.base import check_config_types, config_from_dict, config_to_dict, replace_config
from tessera.core.registry import tiny_overrides

SWIN = "swin_tiny_patch4_window7_224"


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("embed_dim", "96", "must be int, got '96'"),
        ("depths", "2,2", r"must be tuple\[int, \.\.\.\], got '2,2'"),
        ("window_size", 7.5, "must be int | tuple[int, int], got 7.5"),
        ("num_heads", None, r"must be tuple\[int, \.\.\.\], got None"),
        ("in_chans", 3.0, "must be int, got 3.0"),
        ("qkv_bias", "false", "must be bool, got 'false'"),
        ("qkv_bias", 0, "must be bool, got 0"),
    ],
)
def test_swin_config_types_named(field, value, expected):
    with pytest.raises(ValueError, match=rf"SwinConfig\.{field} {expected if '|' not in expected else ''}") as err:
        tessera.create_model(SWIN, **{field: value})
    if "|" in expected:
        assert expected in str(err.value)


@pytest.mark.parametrize("name", ["vit_base_patch16_224", "mixer_b16_224", SWIN])
@pytest.mark.parametrize(
    "field, value",
    [("img_size", 0), ("img_size", -32), ("embed_dim", 0), ("num_classes", -1), ("num_heads", 0), ("drop_path_rate", 1.5)],
)
def test_impossible_values_refused_naming_the_field(name, field, value):
    config = tessera.create_model(name, **tiny_overrides(name)).config
    if field not in {f.name for f in dataclasses.fields(config)}:
        pytest.skip(f"{type(config).__name__} has no {field}")
    if field == "num_heads" and isinstance(config.num_heads, tuple):
        value = (value,) * len(config.num_heads)
    with pytest.raises(ValueError, match=rf"{type(config).__name__}\.{field} must be"):
        tessera.create_model(name, **{**tiny_overrides(name), field: value})


def _wrong_value(tp):
    """A value of the wrong type for an annotation (a str for numbers and bools, a number for str)."""
    origin = typing.get_origin(tp)
    if tp is bool:
        return "false"
    if tp in (int, float) or origin in (tuple, typing.Union) or str(tp).startswith("int |"):
        return "1"
    if tp is str or origin is typing.Literal:
        return 12345
    return None


@pytest.mark.slow
def test_every_registered_config_checks_its_field_types():
    """A wrong type for any annotated field of any registered model's config names field and type."""
    checked = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in tessera.list_models():
            config = tessera.create_model(name, **tiny_overrides(name)).config
            hints = typing.get_type_hints(type(config))
            for f in dataclasses.fields(config):
                bad = _wrong_value(hints.get(f.name))
                if bad is None:
                    continue
                with pytest.raises(ValueError, match=rf"{type(config).__name__}\.{f.name} must be"):
                    replace_config(config, **{f.name: bad})
                checked += 1
            # what was saved loads back: the check never refuses a config's own values
            assert config_from_dict(type(config), config_to_dict(config)) == config
    assert checked > 100


def test_config_from_dict_checks_types_too():
    config = tessera.create_model(SWIN, **tiny_overrides(SWIN)).config
    values = config_to_dict(config) | {"qkv_bias": "false"}
    with pytest.raises(ValueError, match=r"SwinConfig\.qkv_bias must be bool, got 'false'"):
        config_from_dict(type(config), values)
    check_config_types(type(config), {"mlp_ratio": 4, "drop_path_rate": 0})  # ints are fine for float fields
