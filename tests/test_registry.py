import pytest

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
