"""A CPU-friendly drop-in for `lax.conv_general_dilated` (NHWC/HWIO convs).

Why: on XLA:CPU the slow part of a ResNet train step is not the convolution
arithmetic but what XLA builds around the weight gradient. The weight-gradient
convolution wants the activations and the output gradient with the batch as
the minor (contracted) dimension, so XLA inserts transposes of both; its fusion
pass then fuses each transpose with the whole elementwise chain that produced
the activation (BN + ReLU + residual add of this block and, recursively, of
the blocks before it), recomputing several layers' BN/ReLU inside every
transpose. On ResNet-20 those transposes were ~40% of the step; the cost grows
with depth (ResNet-56 gains the most).

The fast path computes exactly the same mathematics with a `custom_vjp`:
  forward   y  = lax conv(x, w), unchanged;
  residual  xT = x transposed to (C, H, W, N), made inside a `lax.cond` whose
            predicate is always true but opaque to XLA. A conditional is a
            fusion barrier: the transpose reads the materialized x once instead
            of recomputing its producers (`lax.optimization_barrier` does not
            help: XLA:CPU strips it before fusion);
  backward dx = XLA's own transposed convolution of g (it needs no transposes);
            dw = one convolution of xT with gT (g transposed behind the same
            barrier) whose dimension numbers match those layouts, so XLA adds
            no transposes of its own.
1x1 convolutions without padding (the projection shortcut) become matrix
products of the subsampled input. Only NHWC inputs / HWIO kernels, no
dilation, no feature groups, floating point, take the fast path; anything else
goes to `lax.conv_general_dilated`. The fast path is reverse-mode only (a
custom_vjp): jax.jvp of it raises.
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax

from resnet_jax import matmul_conv

FAST = 'cpu'
MATMUL = 'matmul'  # matmul_conv: vmapped members as batched matrix products.
CONV_IMPLS = ('auto', 'xla', FAST, MATMUL)

_NHWC = matmul_conv.NHWC

# Optional, for the jit of the train step on CPU: XLA:CPU hands convolutions
# with more than 16 channels (and every weight-gradient convolution, whose
# "feature" is the batch) to YNNPACK, which here ran them single-threaded and
# 1.5-2x slower than XLA's Eigen convolutions. This keeps YNNPACK for dots and
# reductions only. An experimental XLA option: jax.jit rejects it if a later
# jaxlib renames it.
XLA_CPU_COMPILER_OPTIONS = {
    'xla_cpu_experimental_ynn_fusion_type':
        'LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'}


def jit_compiler_options(impl: str):
  """`compiler_options` for the train step's jax.jit: the dict above when the
  fast path is in use on the CPU backend, else None (XLA's defaults)."""
  if (select_conv(impl) is conv_general_dilated
      and jax.default_backend() == 'cpu'):
    return dict(XLA_CPU_COMPILER_OPTIONS)
  return None


def select_conv(impl: str):
  """Returns the `conv_general_dilated` to give the model (None: lax's own).

  'auto': the fast path iff the default backend is the CPU; 'xla': never;
  'cpu': always; 'matmul': matmul_conv's im2col (for members on a GPU).
  """
  if impl == 'auto':
    return conv_general_dilated if jax.default_backend() == 'cpu' else None
  if impl == 'xla':
    return None
  if impl == FAST:
    return conv_general_dilated
  if impl == MATMUL:
    return matmul_conv.conv_general_dilated
  raise ValueError(f'unknown conv impl {impl!r}; '
                   f'choose one of {", ".join(CONV_IMPLS)}')


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, precision=None,
                         preferred_element_type=None):
  """`lax.conv_general_dilated`, faster to differentiate on XLA:CPU."""
  fallback = functools.partial(
      lax.conv_general_dilated, lhs, rhs, window_strides, padding,
      lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, precision=precision,
      preferred_element_type=preferred_element_type)
  pads = matmul_conv.simple_nhwc_pads(
      lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
      dimension_numbers, feature_group_count, preferred_element_type)
  if pads is None:
    return fallback()
  strides = tuple(int(s) for s in window_strides)
  if rhs.shape[:2] == (1, 1) and pads == ((0, 0), (0, 0)):
    return _conv1x1(lhs, rhs, strides, lhs.shape[1:3], precision)
  return _conv(lhs, rhs, strides, pads, precision)


def _conv_nhwc(x, w, strides, pads, precision):
  return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC,
                                  precision=precision)


def _materialize(fn, x, w):
  """fn(x), computed behind a fusion barrier (see the module docstring)."""
  w0 = w.reshape(-1)[0]
  always = (w0 <= w0) | (w0 != w0)  # True, NaN included; XLA can't fold it.
  out = jax.eval_shape(fn, x)
  return lax.cond(always, fn, lambda _: jnp.zeros(out.shape, out.dtype), x)


def _transposed(x, perm, w):
  """x.transpose(perm), computed once from the materialized x.

  The branch returns it flattened to 2-D: otherwise layout assignment makes
  the transpose a bitcast inside the branch and re-does it as a copy outside.
  """
  shape = tuple(x.shape[p] for p in perm)
  flat = _materialize(lambda x: x.transpose(perm).reshape(shape[0], -1), x, w)
  return flat.reshape(shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, w, strides, pads, precision):
  return _conv_nhwc(x, w, strides, pads, precision)


def _conv_fwd(x, w, strides, pads, precision):
  y = _conv_nhwc(x, w, strides, pads, precision)
  xt = _transposed(x, (3, 1, 2, 0), w)  # (C, H, W, N)
  return y, (xt, w)


def _conv_bwd(strides, pads, precision, res, g):
  xt, w = res
  c, h, wd, n = xt.shape
  dx, = jax.linear_transpose(
      lambda x: _conv_nhwc(x, w, strides, pads, precision),
      jax.ShapeDtypeStruct((n, h, wd, c), xt.dtype))(g)
  gt = _transposed(g, (1, 2, 0, 3), w)  # (Ho, Wo, N, O)
  # dw[i, j, c, o] = sum_{n,y,x} xpad[n, s*y + i, s*x + j, c] g[n, y, x, o]:
  # a convolution of xT (batch C, feature N) with gT (in N, out O) dilated by
  # the stride. High padding is whatever makes the output exactly k x k; rows
  # the forward never read are sliced off rather than padded negatively.
  dw_pads = []
  for d, (k, s, (lo, _)) in enumerate(zip(w.shape[:2], strides, pads)):
    hi = k + s * (g.shape[1 + d] - 1) - xt.shape[1 + d] - lo
    if hi < 0:
      xt = lax.slice_in_dim(xt, 0, xt.shape[1 + d] + hi, axis=1 + d)
      hi = 0
    dw_pads.append((lo, hi))
  dw = lax.conv_general_dilated(xt, gt, (1, 1), dw_pads, rhs_dilation=strides,
                                dimension_numbers=_NHWC, precision=precision)
  return dx, dw.transpose(1, 2, 0, 3)  # (C, kh, kw, O) -> HWIO


_conv.defvjp(_conv_fwd, _conv_bwd)


# 1x1 convolutions (the strided projection shortcut) are plain matrix products
# of the subsampled input; its weight gradient contracts over N*H*W, which XLA's
# CPU dot reads in place (no transposes).
def _subsample(x, strides):
  return x[:, ::strides[0], ::strides[1], :]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv1x1(x, w, strides, in_hw, precision):
  return jnp.dot(_subsample(x, strides), w[0, 0], precision=precision)


def _conv1x1_fwd(x, w, strides, in_hw, precision):
  xs = _subsample(x, strides)
  if strides != (1, 1):  # The subsampling copy is fusible: keep it to one.
    xs = _materialize(lambda x: _subsample(x, strides), x, w)
  return jnp.dot(xs, w[0, 0], precision=precision), (xs, w)


def _conv1x1_bwd(strides, in_hw, precision, res, g):
  xs, w = res
  c, o = w.shape[2:]
  dw = lax.dot_general(xs.reshape(-1, c), g.reshape(-1, o),
                       (((0,), (0,)), ((), ())), precision=precision)
  gx = jnp.dot(g, w[0, 0].T, precision=precision)
  # Scatter back to the strided positions: interior padding with zeros.
  dx = lax.pad(gx, jnp.zeros((), gx.dtype), [(0, 0, 0)] + [
      (0, size - s * (n - 1) - 1, s - 1)
      for size, n, s in zip(in_hw, gx.shape[1:3], strides)] + [(0, 0, 0)])
  return dx, dw.reshape(w.shape)


_conv1x1.defvjp(_conv1x1_fwd, _conv1x1_bwd)
