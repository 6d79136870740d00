"""--mode=evaluate: a restored checkpoint on a whole split of the data."""
from jax.sharding import NamedSharding, PartitionSpec as P
import optax

from resnet_jax import checkpoint, data, train
from resnet_jax import config as config_lib


def restore_for_inference(config, workdir: str, which: str, mesh):
  """Returns (state, step, meta) for `which` checkpoint; nothing is written.

  Only params and batch statistics are read, so the optimizer settings of
  the config need not match those of the run that wrote the checkpoint.
  """
  manager = checkpoint.create_manager(workdir, read_only=True)
  step = checkpoint.select_step(manager, which)
  meta = checkpoint.restore_meta(manager, step, config)
  variables = checkpoint.restore_variables(manager, step,
                                           NamedSharding(mesh, P()))
  model = train.create_model(config)
  state = train.TrainState.create(apply_fn=model.apply,
                                  params=variables['params'],
                                  batch_stats=variables['batch_stats'],
                                  tx=optax.identity())
  manager.close()
  return state, step, meta


def evaluate(config, workdir: str, which: str = 'best',
             split: str = 'test') -> dict:
  config_lib.validate(config)
  mesh = train.create_mesh()
  state, step, meta = restore_for_inference(config, workdir, which, mesh)
  examples = data.load_splits(config, (split,))[split]
  normalization = (meta['normalization']['mean'], meta['normalization']['std'])
  eval_data = train.put_eval_chunks(examples, config.train.eval_batch_size, mesh)
  metrics = train.evaluate(train.make_eval_fn(normalization), state, eval_data)
  return {'split': split, 'accuracy': metrics['accuracy'],
          'loss': metrics['loss'], 'num_examples': metrics['num_examples'],
          'step': step}
