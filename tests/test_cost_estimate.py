"""bench/cost_estimate.py: XLA's cost analysis of the GPU-built train step
agrees with a hand count, and the H100 estimate is derived consistently."""
import os
import sys

import pytest

from conftest import REPO

sys.path.insert(0, os.path.join(REPO, 'bench'))
import cost_estimate  # pylint: disable=wrong-import-position


@pytest.fixture(scope='module')
def tiny():
  """ResNet-8 on 16x16 images, batch 16, float32 and bfloat16."""
  return {dtype: cost_estimate.analyze(1, dtype, batch_size=16, image_size=16)
          for dtype in ('float32', 'bfloat16')}


def test_flops_match_the_hand_count(tiny):
  for r in tiny.values():
    assert r['hand_flops'] > 0
    # Convolutions are nearly all of it; BN, the optimizer and the skipped
    # input gradient of the first layer move it by a few per cent.
    assert 0.9 < r['flops'] / r['hand_flops'] < 1.1, r
    assert 0.9 < r['lowered_flops'] / r['hand_flops'] < 1.1, r


def test_the_step_holds_xla_convolutions_and_counts_bytes_per_op(tiny):
  # 7 convolutions and 2 shortcut ones: forward, weight gradient, and every
  # input gradient but the first layer's (as tests/test_cuda_lowering.py).
  for r in tiny.values():
    assert r['convolutions'] == 3 * 9 - 1
    assert 0 < r['activation_ops'] < r['hlo_ops']
    # XLA's bytes accessed: each top-level op's operands and output, so the
    # kernel count parses the same ops.
    assert r['bytes_from_ops'] == pytest.approx(r['bytes'], rel=0.01)
    # Fusion: the compiled module moves less than the lowered one.
    assert r['bytes'] < r['lowered_bytes']
  assert tiny['bfloat16']['lowered_bytes'] < tiny['float32']['lowered_bytes']
  assert tiny['bfloat16']['flops'] == pytest.approx(tiny['float32']['flops'],
                                                    rel=0.05)


def test_h100_estimate_is_the_larger_bound(tiny):
  r = tiny['float32']
  e = cost_estimate.h100_estimate(r)
  assert e['roofline_us'] == max(e['compute_us'], e['memory_us'])
  assert e['compute_us'] == pytest.approx(r['flops'] / 494e12 * 1e6)
  fast, slow = e['step_us']
  assert e['roofline_us'] <= fast <= slow
  assert fast == max(e['roofline_us'], 3 * r['activation_ops'])
  assert e['images_per_s'][0] == pytest.approx(16e6 / fast)
  assert e['epoch_s'][1] == pytest.approx(45_000 // 16 * slow / 1e6)


def test_hand_count_of_resnet20():
  """ResNet-20 forward at 32x32: ~40.8M multiply-adds per image without
  padding; XLA (and the hand count) skip the taps on padding, ~5% here."""
  forward = cost_estimate.hand_count_flops(3, 1) / 3
  assert 0.9 * 2 * 40.8e6 < forward < 2 * 40.8e6
  assert cost_estimate.valid_taps(32, 3, 1, 1) == 3 * 32 - 2
  assert cost_estimate.valid_taps(32, 3, 2, 1) == 3 * 16 - 1
  assert cost_estimate.valid_taps(32, 1, 2, 0) == 16
