import pytest
import torch
from torch import nn

from tessera.core.ema import EMAModel


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_first_update_with_warmup_equals_the_model():
    model = net()
    ema = EMAModel(model, decay=0.99)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for a, b in zip(ema.module.state_dict().values(), model.state_dict().values()):
        torch.testing.assert_close(a, b.to(a.dtype))


def test_update_is_the_exponential_average_and_buffers_are_copied():
    model = net()
    ema = EMAModel(model, decay=0.9, warmup=False)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(2.0)
        model[1].running_mean.add_(5.0)
    model[1].num_batches_tracked += 3
    ema.update(model)
    torch.testing.assert_close(ema.module[0].weight, 0.9 * before["0.weight"] + 0.1 * model[0].weight)
    torch.testing.assert_close(ema.module[1].running_mean, 0.9 * before["1.running_mean"] + 0.1 * model[1].running_mean)
    assert ema.module[1].num_batches_tracked == model[1].num_batches_tracked


def test_ema_runs_a_forward_without_gradients_and_stays_in_eval():
    model = net()
    ema = EMAModel(model, decay=0.5)
    ema.train()
    assert not ema.module.training
    y = ema(torch.randn(5, 3))
    assert y.shape == (5, 2) and not y.requires_grad
    assert all(not p.requires_grad for p in ema.parameters())


def test_bad_decay_is_refused():
    with pytest.raises(ValueError, match="decay"):
        EMAModel(net(), decay=1.0)


def test_state_dict_round_trip_keeps_the_update_count():
    model = net()
    ema = EMAModel(model, decay=0.9)
    ema.update(model)
    ema.update(model)
    other = EMAModel(net(), decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert int(other.num_updates) == 2 and other.current_decay() == ema.current_decay()
