"""Convolution as matrix products (im2col): `model.conv_impl=matmul`.

Why: vmapping the train step over members (train.num_seeds) gives each
member its own weights, so `lax.conv_general_dilated` becomes a grouped
convolution (feature groups = members, the backward pass too), which XLA:GPU
and cuDNN run slowly: on an H200, 8 vmapped ResNet-20s took 9x one (issue
31; jax issues #13800, #26568). Written as a matrix product of the input's
patches, the same layer vmaps to a batched matrix product (member = batch
dimension), the kind of kernel a GPU runs well, and its gradients are
batched matrix products, slices and pads. The price: the patches are k*k
copies of the input (memory traffic, and memory if XLA keeps them for the
backward pass). Whether it pays is a GPU measurement
(bench/gpu_throughput.py --members 1,8 --conv_impl auto,matmul); the
lowering is checked without one (bench/cuda_lowering.py).

The same mathematics as `lax.conv_general_dilated` for NHWC inputs, HWIO
kernels, explicit or string padding and strides; anything else (dilation,
feature groups, other layouts) falls back to lax's convolution.
"""
from typing import Optional

import jax.numpy as jnp
from jax import lax

NHWC = ('NHWC', 'HWIO', 'NHWC')


def simple_nhwc_pads(lhs, rhs, window_strides, padding, lhs_dilation,
                     rhs_dilation, dimension_numbers, feature_group_count,
                     preferred_element_type) -> Optional[tuple]:
  """((lo, hi), (lo, hi)) padding of a plain NHWC/HWIO floating-point
  convolution without dilation or groups, else None (the caller falls back
  to lax's convolution)."""
  if (lhs.ndim != 4 or rhs.ndim != 4 or feature_group_count != 1
      or any(d != 1 for d in (lhs_dilation or ()) + (rhs_dilation or ()))
      or lhs.dtype != rhs.dtype
      or not jnp.issubdtype(lhs.dtype, jnp.floating)
      or preferred_element_type not in (None, lhs.dtype)
      or lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
      != lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)):
    return None
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2],
                                  tuple(int(s) for s in window_strides),
                                  padding)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  return None if any(p < 0 for pair in pads for p in pair) else pads


def patches(x, kernel_hw, strides, pads):
  """(N, Ho, Wo, kh*kw*C): each output position's receptive field, ordered
  (i, j, c) as an HWIO kernel reshaped to (kh*kw*C, O)."""
  x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  n, h, w, c = x.shape
  (kh, kw), (sh, sw) = kernel_hw, strides
  ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
  return jnp.concatenate([
      lax.slice(x, (0, i, j, 0), (n, i + sh * (ho - 1) + 1,
                                  j + sw * (wo - 1) + 1, c), (1, sh, sw, 1))
      for i in range(kh) for j in range(kw)], axis=-1)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, precision=None,
                         preferred_element_type=None):
  """`lax.conv_general_dilated` as one matrix product of the patches."""
  pads = simple_nhwc_pads(lhs, rhs, window_strides, padding, lhs_dilation,
                          rhs_dilation, dimension_numbers, feature_group_count,
                          preferred_element_type)
  if pads is None:
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, precision=precision,
        preferred_element_type=preferred_element_type)
  strides = tuple(int(s) for s in window_strides)
  cols = patches(lhs, rhs.shape[:2], strides, pads)
  return jnp.dot(cols, rhs.reshape(-1, rhs.shape[-1]), precision=precision)
