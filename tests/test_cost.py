"""dx.models.training_cost reproduces DeepSeek-V3's published training-cost table (H800 GPU-hours)."""
import pytest

from deepseek_ext.models import DeepSeekV3Config, flops_per_token, implied_mfu, training_cost

V3 = DeepSeekV3Config.preset("v3_671b")
PRETRAIN_TOKENS = 14.8e12
# the report's table: pre-training 2664K, context extension 119K, post-training 5K GPU-hours; $2 per GPU-hour
REPORTED = {"pre_training": 2664e3, "context_extension": 119e3, "post_training": 5e3}
# context extension: 1000 steps at 32K x 1920 sequences, then 1000 steps at 128K x 480
EXTENSION = [(32 * 1024, 1000 * 1920 * 32 * 1024), (128 * 1024, 1000 * 480 * 128 * 1024)]


def test_the_formula():
    cost = training_cost(V3, 1e12, gpus=1000, mfu=0.5, price_per_gpu_hour=3.0, peak_flops=1e15)
    expected_hours = flops_per_token(V3, 4096) * 1e12 / (0.5 * 1e15) / 3600
    assert cost.gpu_hours == pytest.approx(expected_hours)
    assert cost.cost == pytest.approx(3.0 * expected_hours)
    assert cost.days == pytest.approx(expected_hours / 1000 / 24)
    assert cost.total_flops == pytest.approx(cost.flops_per_token * 1e12)
    longer = training_cost(V3, 1e12, gpus=1000, mfu=0.5, seq_len=8192, peak_flops=1e15)
    assert longer.gpu_hours > cost.gpu_hours  # attention grows with the context


def test_pretraining_matches_the_report():
    mfu = implied_mfu(V3, PRETRAIN_TOKENS, REPORTED["pre_training"])
    assert 0.40 < mfu < 0.41  # of the H800's dense BF16 peak (half of that, ~20%, of its FP8 peak)
    pre = training_cost(V3, PRETRAIN_TOKENS, gpus=2048, mfu=mfu, price_per_gpu_hour=2.0)
    assert pre.gpu_hours == pytest.approx(2664e3)
    assert pre.cost == pytest.approx(5.328e6)
    assert 50 < pre.days < 60  # "less than two months" on 2048 GPUs
    per_trillion = training_cost(V3, 1e12, gpus=2048, mfu=mfu)
    assert per_trillion.gpu_hours == pytest.approx(180e3, rel=0.01)  # "180K H800 GPU hours per trillion tokens"
    assert per_trillion.days == pytest.approx(3.7, abs=0.05)  # "3.7 days on our cluster with 2048 H800 GPUs"


def test_whole_table_totals_2788k_gpu_hours_and_5576k_dollars():
    pre_mfu = implied_mfu(V3, PRETRAIN_TOKENS, REPORTED["pre_training"])
    pre = training_cost(V3, PRETRAIN_TOKENS, 2048, pre_mfu)
    # one utilization for both extension phases, implied by their reported 119K hours
    ext_hours_at_full = sum(training_cost(V3, tokens, 2048, 1.0, seq_len=seq).gpu_hours for seq, tokens in EXTENSION)
    ext_mfu = ext_hours_at_full / REPORTED["context_extension"]
    assert 0.2 < ext_mfu < pre_mfu  # long sequences run at a lower utilization than 4K pre-training
    ext = [training_cost(V3, tokens, 2048, ext_mfu, seq_len=seq) for seq, tokens in EXTENSION]
    total_hours = pre.gpu_hours + sum(c.gpu_hours for c in ext) + REPORTED["post_training"]
    total_cost = pre.cost + sum(c.cost for c in ext) + 2.0 * REPORTED["post_training"]
    assert total_hours == pytest.approx(2.788e6)
    assert total_cost == pytest.approx(5.576e6)


@pytest.mark.parametrize("kwargs, name", [({"tokens": 0}, "tokens"), ({"gpus": 0}, "gpus"), ({"mfu": 1.5}, "mfu"),
                                          ({"mfu": 0.0}, "mfu"), ({"price_per_gpu_hour": -1.0}, "price_per_gpu_hour")])
def test_bad_arguments_are_named(kwargs, name):
    args = {"tokens": 1e12, "gpus": 8, "mfu": 0.4, **kwargs}
    with pytest.raises(ValueError, match=name):
        training_cost(V3, **args)
