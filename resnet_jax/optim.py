"""Learning-rate schedules and optimizers (Optax), built from `config.train`.

The peak learning rate and the weight decay are injectable hyperparameters
(optax.inject_hyperparams): they live in the optimizer state, so the members
of a sweep (train.sweep_learning_rates, train.sweep_weight_decays) share one
optimizer and one jitted step, each with its own values.
"""
import jax
import optax

from resnet_jax.errors import CheckpointError


def create_schedule(train_config, peak=None) -> optax.Schedule:
  """Linear warmup from 0, then cosine, linear or step decay to the end.

  Peaks at `peak` (default train.learning_rate).
  """
  lr = train_config.learning_rate if peak is None else peak
  steps, warmup = train_config.steps, train_config.warmup_steps
  if train_config.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, steps)
  if train_config.schedule == 'linear':
    decay = optax.linear_schedule(lr, 0.0, steps - warmup)
  else:  # 'step': multiply by step_factor at each boundary (He et al.).
    boundaries = {int(b * steps) - warmup: train_config.step_factor
                  for b in train_config.step_boundaries}
    decay = optax.piecewise_constant_schedule(lr, boundaries)
  if not warmup:
    return decay
  return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def decay_mask(params):
  """Weight decay on conv and dense kernels only, not on BN params or biases."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def create_optimizer(train_config) -> optax.GradientTransformation:
  """The optimizer, its peak learning rate and weight decay injectable;
  gradients clipped to global norm train.grad_clip_norm first, if set."""
  shape = create_schedule(train_config, peak=1.0)
  # .get: configs saved before these keys had them at these values.
  nesterov = train_config.get('nesterov', True)  # SGD's; AdamW has none.
  clip = train_config.get('grad_clip_norm', 0.0)

  @optax.inject_hyperparams
  def optimizer(learning_rate, weight_decay):
    schedule = lambda step: learning_rate * shape(step)
    if train_config.optimizer == 'sgd':
      return optax.chain(
          optax.add_decayed_weights(weight_decay, decay_mask),
          optax.sgd(schedule, momentum=train_config.momentum,
                    nesterov=nesterov))
    return optax.adamw(schedule, b1=train_config.momentum,
                       weight_decay=weight_decay, mask=decay_mask)

  tx = optimizer(learning_rate=train_config.learning_rate,
                 weight_decay=train_config.weight_decay)
  if not clip:  # Off: the state (and so every checkpoint) is as without it.
    return tx
  return optax.chain(optax.clip_by_global_norm(clip), tx)


def hyperparams_state(opt_state):
  """The inject_hyperparams state within create_optimizer's state."""
  return opt_state if hasattr(opt_state, 'hyperparams') else opt_state[1]


def with_hyperparams(opt_state, learning_rate, weight_decay):
  """`opt_state` of create_optimizer with another peak rate and decay."""
  if not hasattr(opt_state, 'hyperparams'):  # Behind clip_by_global_norm.
    clip_state, inner = opt_state
    return (clip_state, with_hyperparams(inner, learning_rate, weight_decay))
  hyperparams = dict(opt_state.hyperparams, learning_rate=learning_rate,
                     weight_decay=weight_decay)
  return opt_state._replace(hyperparams=hyperparams)


def learning_rate(opt_state, train_config, step):
  """The learning rate applied at `step`: the schedule at the state's peak."""
  shape = create_schedule(train_config, peak=1.0)
  return hyperparams_state(opt_state).hyperparams['learning_rate'] * shape(step)


def check_resumable(saved_train_config: dict, train_config, where: str):
  """Gradient clipping adds a state to the optimizer's: a run resumes only
  with clipping on or off as its checkpoint (`where`) was written."""
  saved = bool(saved_train_config.get('grad_clip_norm', 0.0))
  if saved != bool(train_config.grad_clip_norm):
    raise CheckpointError(
        f'{where} was written with gradient clipping '
        f'{"on" if saved else "off"}; set train.grad_clip_norm '
        f'{"> 0" if saved else "= 0"} to resume it, or rerun with --restart')
