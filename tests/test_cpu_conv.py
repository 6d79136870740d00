"""The CPU fast convolution path and the matrix-product one (for vmapped
members on a GPU) compute what lax.conv_general_dilated does."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from resnet_jax import cpu_conv, matmul_conv
from resnet_jax.models import ResNet

# What flax.linen.Conv passes for NHWC inputs (HWIO kernels).
FLAX_DN = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
TOL = dict(rtol=2e-5, atol=2e-5)
CONVS = {'cpu': cpu_conv.conv_general_dilated,
         'matmul': matmul_conv.conv_general_dilated}


def _conv_fn(conv, strides, padding):
  return functools.partial(conv, window_strides=strides, padding=padding,
                           lhs_dilation=(1, 1), rhs_dilation=(1, 1),
                           dimension_numbers=FLAX_DN, feature_group_count=1,
                           precision=None)


def _check_against_lax(x, w, strides, padding, impl='cpu'):
  ref = _conv_fn(lax.conv_general_dilated, strides, padding)
  fast = jax.jit(_conv_fn(CONVS[impl], strides, padding))
  y_ref, vjp_ref = jax.vjp(lambda x, w: ref(x, w), x, w)
  y_fast, vjp_fast = jax.vjp(lambda x, w: fast(x, w), x, w)
  np.testing.assert_allclose(y_fast, y_ref, **TOL)
  g = jax.random.normal(jax.random.PRNGKey(7), y_ref.shape)
  for got, want in zip(vjp_fast(g), vjp_ref(g)):
    np.testing.assert_allclose(got, want, **TOL)


@pytest.mark.parametrize('n,h,w,cin,cout,k,stride,pad', [
    (4, 8, 8, 3, 16, 3, 1, 1),    # stem-like
    (2, 8, 8, 16, 16, 3, 1, 1),   # 3x3 stride 1 pad 1
    (2, 8, 8, 16, 32, 3, 2, 1),   # 3x3 stride 2 pad 1
    (2, 8, 8, 16, 32, 1, 2, 0),   # 1x1 stride 2 pad 0 (projection shortcut)
    (3, 7, 5, 4, 6, 3, 1, 1),     # odd spatial sizes
    (3, 7, 5, 4, 6, 3, 2, 1),
    (2, 9, 9, 5, 7, 3, 2, 1),
    (2, 9, 9, 5, 7, 1, 2, 0),
    (1, 6, 6, 8, 8, 3, 1, 1),     # batch 1
    (1, 9, 7, 3, 5, 1, 1, 0),     # 1x1 stride 1
    (2, 6, 6, 64, 64, 3, 1, 1),   # wider
])
def test_matches_lax(n, h, w, cin, cout, k, stride, pad):
  _check_shape(n, h, w, cin, cout, k, stride, pad, 'cpu')


@pytest.mark.parametrize('n,h,w,cin,cout,k,stride,pad', [
    (4, 8, 8, 3, 16, 3, 1, 1), (3, 7, 5, 4, 6, 3, 2, 1),
    (2, 9, 9, 5, 7, 1, 2, 0), (1, 9, 7, 3, 5, 1, 1, 0)])
def test_matmul_matches_lax(n, h, w, cin, cout, k, stride, pad):
  _check_shape(n, h, w, cin, cout, k, stride, pad, 'matmul')


def _check_shape(n, h, w, cin, cout, k, stride, pad, impl):
  kx, kw = jax.random.split(jax.random.PRNGKey(n * 100 + h * 10 + cin))
  x = jax.random.normal(kx, (n, h, w, cin))
  wt = jax.random.normal(kw, (k, k, cin, cout)) / np.sqrt(k * k * cin)
  _check_against_lax(x, wt, (stride, stride), ((pad, pad), (pad, pad)), impl)


@pytest.mark.parametrize('impl', sorted(CONVS))
def test_asymmetric_padding_and_string_padding(impl):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 6, 3))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 4))
  _check_against_lax(x, w, (2, 1), ((0, 2), (1, 0)), impl)
  _check_against_lax(x, w, (2, 2), 'SAME', impl)


def test_vmapped_members_become_batched_matrix_products():
  """What matmul_conv is for: vmapped over members (each its own input and
  weights) lax's convolution becomes a grouped one; the matrix-product
  form a batched dot, with no convolution, forward and backward."""
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 2, 8, 8, 16))
  w = jax.random.normal(jax.random.PRNGKey(1), (4, 3, 3, 16, 8)) / 12

  def members_grad(conv):
    loss = lambda x, w: jnp.sum(_conv_fn(conv, (2, 2), ((1, 1), (1, 1)))(
        x, w) ** 2)
    return jax.jit(jax.vmap(jax.value_and_grad(loss, argnums=(0, 1))))

  hlo = {name: members_grad(conv).lower(x, w).as_text()
         for name, conv in (('lax', lax.conv_general_dilated),
                            ('matmul', matmul_conv.conv_general_dilated))}
  assert 'feature_group_count = 4' in hlo['lax']
  assert 'stablehlo.convolution' not in hlo['matmul']
  assert 'batching_dims = [0] x [0]' in hlo['matmul']
  got = members_grad(matmul_conv.conv_general_dilated)(x, w)
  want = members_grad(lax.conv_general_dilated)(x, w)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_falls_back_outside_the_fast_path():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 4))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 2, 4))
  kwargs = dict(window_strides=(1, 1), padding=((2, 2), (2, 2)),
                rhs_dilation=(2, 2), dimension_numbers=FLAX_DN,
                feature_group_count=2)
  np.testing.assert_allclose(
      cpu_conv.conv_general_dilated(x, w, **kwargs),
      lax.conv_general_dilated(x, w, **kwargs), **TOL)
  # The fallback is lax itself: no custom_vjp (and no lax.cond) in the graph.
  jaxpr = jax.make_jaxpr(lambda x, w: cpu_conv.conv_general_dilated(
      x, w, **kwargs))(x, w)
  assert 'custom_vjp' not in str(jaxpr) and 'cond' not in str(jaxpr)


def test_fast_path_is_taken_for_flax_convs():
  x = jnp.ones((2, 8, 8, 4))
  w = jnp.ones((3, 3, 4, 4))
  conv = _conv_fn(cpu_conv.conv_general_dilated, (1, 1), ((1, 1), (1, 1)))
  assert 'custom_vjp' in str(jax.make_jaxpr(conv)(x, w))


@pytest.mark.parametrize('shortcut,impl', [
    ('conv', 'cpu'), ('conv', 'matmul'),
    # The same convolutions in other nets: the slow tier.
    pytest.param('zeropad', 'cpu', marks=pytest.mark.slow),
    pytest.param(None, 'cpu', marks=pytest.mark.slow)])
def test_resnet_param_grads_match(shortcut, impl):
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 3))
  y = jnp.arange(4) % 10

  def grads(conv):
    model = ResNet(num_layers=1, shortcut=shortcut, conv_general_dilated=conv)
    variables = model.init(jax.random.PRNGKey(1), x, train=False)

    def loss(params):
      logits, _ = model.apply(
          {'params': params, 'batch_stats': variables['batch_stats']}, x,
          train=True, mutable=['batch_stats'])
      return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), y])
    return jax.jit(jax.value_and_grad(loss))(variables['params'])

  (l_ref, g_ref), (l_fast, g_fast) = grads(None), grads(CONVS[impl])
  np.testing.assert_allclose(l_fast, l_ref, **TOL)
  flat_ref, tree_ref = jax.tree.flatten(g_ref)
  flat_fast, tree_fast = jax.tree.flatten(g_fast)
  assert tree_ref == tree_fast
  for got, want in zip(flat_fast, flat_ref):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_select_conv(monkeypatch):
  assert cpu_conv.select_conv('xla') is None
  assert cpu_conv.select_conv(cpu_conv.FAST) is cpu_conv.conv_general_dilated
  assert (cpu_conv.select_conv(cpu_conv.MATMUL)
          is matmul_conv.conv_general_dilated)
  monkeypatch.setattr(jax, 'default_backend', lambda: 'cpu')
  assert cpu_conv.select_conv('auto') is cpu_conv.conv_general_dilated
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert cpu_conv.select_conv('auto') is None
  with pytest.raises(ValueError, match='auto, xla, cpu, matmul'):
    cpu_conv.select_conv('gemm')


def test_jit_compiler_options(monkeypatch):
  monkeypatch.setattr(jax, 'default_backend', lambda: 'cpu')
  opts = cpu_conv.jit_compiler_options('auto')
  assert opts == cpu_conv.XLA_CPU_COMPILER_OPTIONS
  assert cpu_conv.jit_compiler_options('xla') is None
  assert cpu_conv.jit_compiler_options(cpu_conv.MATMUL) is None
  # XLA accepts the option (it is experimental: a rename would fail here).
  monkeypatch.undo()
  if jax.default_backend() == 'cpu':
    f = jax.jit(lambda x: jnp.sum(x * 2), compiler_options=opts)
    assert float(f(jnp.ones(3))) == 6.0
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert cpu_conv.jit_compiler_options('auto') is None
  assert cpu_conv.jit_compiler_options(cpu_conv.FAST) is None
