"""Learning-rate schedules and optimizers (Optax), built from `config.train`."""
import jax
import optax


def create_schedule(train_config) -> optax.Schedule:
  """Linear warmup from 0, then cosine, linear or step decay to the end."""
  lr, steps, warmup = (train_config.learning_rate, train_config.steps,
                       train_config.warmup_steps)
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
  schedule = create_schedule(train_config)
  if train_config.optimizer == 'sgd':
    return optax.chain(
        optax.add_decayed_weights(train_config.weight_decay, decay_mask),
        optax.sgd(schedule, momentum=train_config.momentum, nesterov=True))
  return optax.adamw(schedule, b1=train_config.momentum,
                     weight_decay=train_config.weight_decay, mask=decay_mask)
