"""CIFAR-100 in the official binary layout (cifar-100-binary.tar.gz).

Records as CIFAR-10's (cifar10_binary.py) with two label bytes, coarse then
fine: the 100 fine labels are the classes (set model.num_classes=100).
train.bin holds the 50,000 training images, test.bin the 10,000 test ones.
"""
from resnet_jax.data import cifar10_binary, download

LAYOUT = cifar10_binary.Layout(
    download.CIFAR100, r'train\.bin', 'train.bin', 'test.bin', 2, 1,
    'fine_label_names.txt', ())


def splits(data_config):
  return cifar10_binary.splits(data_config, LAYOUT)


def class_names(data_config):
  return cifar10_binary.class_names(data_config, LAYOUT)


class Reader(cifar10_binary.Reader):
  layout = LAYOUT
