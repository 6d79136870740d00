"""The steps a GPU run builds lower for CUDA (and TPU) without CPU-only
pieces and with the intended shardings (bench/cuda_lowering.py)."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

# ResNet-20 with 1x1-conv shortcuts: 6n+1 = 19 convolutions and 2 shortcut
# ones. A train step has each forward, each weight gradient and every input
# gradient but the first layer's; the eval step with flip runs the net twice.
CONV_LAYERS = 21
TRAIN_CONVS, EVAL_CONVS = 3 * CONV_LAYERS - 1, 2 * CONV_LAYERS


@pytest.fixture(scope='module')
def lowered():
  result = subprocess.run(
      [sys.executable, 'bench/cuda_lowering.py', '--json',
       '--platforms=cuda,tpu'], cwd=REPO, capture_output=True, text=True,
      timeout=600, env={**os.environ, 'XLA_FLAGS': ''})
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize('platform', ['cuda', 'tpu'])
def test_steps_lower_with_xla_convolutions_and_no_host_code(lowered, platform):
  assert lowered['devices'] == 8
  for name, steps in lowered[platform].items():
    dtype = 'bf16' if 'bfloat16' in name else 'f32'
    groups = int(name.split()[0])
    for step, convs in (('train_step', TRAIN_CONVS), ('eval_step', EVAL_CONVS)):
      report = steps[step]
      assert report['platforms'] == [platform]
      # No custom call but sharding annotations: no CPU convolution path,
      # no host callback (both would fail or stall on the accelerator).
      assert report['kernel_calls'] == [], (name, step)
      # The dense layer, vmapped over the member axis (one member too): a
      # batched matrix product (forward and both gradients; one per view in
      # evaluation).
      dense = 3 if step == 'train_step' else 2
      # Evaluation feeds every member the same images, so its first
      # convolution (one per view) is a plain one with the members' output
      # channels side by side.
      shared_input = 2 if step == 'eval_step' and groups > 1 else 0
      if name.endswith('matmul'):
        # Members' other formulation: no convolution left, each one a
        # batched matrix product of the patches.
        assert report['convolutions'] == 0, (name, step)
        assert report['batched_dots'] == convs - shared_input + dense
        continue
      assert report['batched_dots'] == dense, (name, step)
      assert report['convolutions'] == convs, (name, step)
      assert report['convolution_types'] == [dtype], (name, step)
      # One member: plain convolutions. Vmapped members: grouped by member
      # (forward and backward; sharded members too, in this global program
      # the partitioner then splits).
      expected = {f'feature {groups}, batch 1': convs - shared_input}
      if shared_input:
        expected['feature 1, batch 1'] = shared_input
      assert report['convolution_groups'] == expected, (name, step)


@pytest.mark.slow  # Lowers for 8 fake devices (~25 s on 2 cores).
def test_batch_and_members_are_sharded_as_intended(lowered):
  for name, steps in lowered['cuda'].items():
    members = int(name.split()[0])
    sharded = 'sharded' in name
    mesh = ('<["members"=8, "data"=1]>' if sharded
            else '<["members"=1, "data"=8]>')
    train, evaluate = steps['train_step'], steps['eval_step']
    assert train['mesh'] == [mesh] and evaluate['mesh'] == [mesh]
    for report in (train, evaluate):
      state = {p: s for p, s in report['arg_shardings'].items()
               if p.startswith(('state.', 'members.'))}
      # Every leaf of the state (train) or of the members' variables (eval)
      # carries the member axis first.
      assert len(state) > 100
      assert all(s.startswith('[{"members"}') for s in state.values()), state
    # The whole training set is on every device, each member's epoch order
    # with its member; each step's batch is split over 'data' (and its
    # member axis over 'members'; a size-1 mesh axis is dropped from the
    # constraint).
    data = {p: s for p, s in train['arg_shardings'].items()
            if p.startswith("inputs['data']")}
    assert len(data) == 2 and all('"' not in s for s in data.values()), data
    assert train['arg_shardings']["inputs['order']"] == '[{"members"}, {}]'

    batch = '{}' if sharded else '{"data"}'
    assert [tuple(c) for c in train['constraints']] == sorted([
        (f'[{{"members"}}, {batch}, {{}}, {{}}, {{}}]',
         f'tensor<{members}x64x32x32x3xui8>'),
        (f'[{{"members"}}, {batch}]', f'tensor<{members}x64xi32>')])
    # Validation chunks (chunks, batch, ...): the batch split over 'data'.
    chunks = {p: s for p, s in evaluate['arg_shardings'].items()
              if p.startswith('chunks')}
    assert len(chunks) == 3
    assert all(s.startswith('[{}, {"data"}') for s in chunks.values()), chunks
