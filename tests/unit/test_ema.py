"""callbacks=ema's averaging rule, BN recompute and its bad settings (the runs themselves: tests/integration)."""

import copy

import pytest
import torch
from helpers import TINY_SPEC

from reparam.ema import EMAWeights, WeightsComparison
from reparam.errors import UserError
from reparam.models import build_model


def test_the_decay_warms_up_so_a_short_run_forgets_its_initial_weights() -> None:
    ema = EMAWeights(decay=0.999)
    decays = {}
    for updates in (0, 90, 990, 100_000):
        ema.updates = updates
        decays[updates] = ema.current_decay()
    assert decays == {0: pytest.approx(0.1), 90: pytest.approx(0.91), 990: pytest.approx(0.991), 100_000: 0.999}
    ema.decay_warmup = False
    ema.updates = 0
    assert ema.current_decay() == 0.999


def test_the_average_moves_by_one_minus_the_current_decay() -> None:
    ema = EMAWeights(decay=0.5, decay_warmup=False)
    averaged, current = [torch.zeros(3)], [torch.full((3,), 4.0)]
    ema._average(averaged, current, torch.tensor(1))
    assert torch.equal(averaged[0], torch.full((3,), 2.0))


@pytest.mark.parametrize(
    "kwargs, words", [({"decay": 1.0}, "decay"), ({"bn_data": "test"}, "bn_data"), ({"bn_images": 0}, "bn_images")]
)
def test_bad_settings_are_one_clear_error(kwargs, words) -> None:
    with pytest.raises(UserError, match=f"callbacks.ema.{words}"):
        EMAWeights(**kwargs)


def test_recomputed_bn_statistics_are_the_averaged_weights_own() -> None:
    """What the callback does before an evaluation (torch's update_bn, momentum None): the running statistics become
    the batch statistics of the averaged weights on those images, whatever the buffers held before."""
    from torch.optim.swa_utils import update_bn

    torch.manual_seed(0)
    model = build_model(TINY_SPEC)
    x = torch.randn(64, 3, 32, 32)
    stale = copy.deepcopy(model)
    for m in stale.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.fill_(3.0)
            m.running_var.fill_(0.01)
    with torch.no_grad():
        train_mode_logits = model.train()(x)  # batch statistics
        assert (stale.eval()(x) - train_mode_logits).abs().max() > 0.1  # the stale statistics mislead
        update_bn([x], stale)
        # equal up to the unbiased variance that running_var keeps (n = batch x pixels per channel)
        assert torch.allclose(stale.eval()(x), train_mode_logits, atol=2e-3)


def test_a_comparison_round_trips_through_a_checkpoint_entry() -> None:
    verdict = WeightsComparison("raw", 0.9, 0.3, 120)
    assert WeightsComparison.from_dict(verdict.to_dict()) == verdict
    assert WeightsComparison.from_dict(None) is None
