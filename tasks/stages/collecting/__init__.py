"""The parts of the collect stage (``tasks/stages/collect.py``), one job per module.

- :mod:`.checks`: the error every source raises, and where a source may live (``data/external``).
- :mod:`.digits`, :mod:`.torchvision_source`, :mod:`.folder`, :mod:`.npz`: the source
  adapters, each turning its source into an :class:`~tasks.core.files.ImageDataset`.
- :mod:`.augment`: ``collect.augment_to``, the digits grown to MNIST scale by affine copies.

The stage composes them (source, augmentation, labelled feedback) and writes ``data/raw``.
"""
