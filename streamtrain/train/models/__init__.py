"""Model plugins: built-ins by name, or a user factory by ``package.module:factory``.

>>> from streamtrain.sample.spec import SampleSpec
>>> model = build_model("linear", SampleSpec(feature_shape=(4,), task="binary"))
>>> sorted(MODEL_NAMES)
['auto', 'cnn', 'linear', 'mlp', 'rnn', 'transformer']
"""

from streamtrain.train.models.registry import (
    MODEL_NAMES,
    SPARSE_MODEL_NAMES,
    ModelFactory,
    build_model,
)

__all__ = ["MODEL_NAMES", "SPARSE_MODEL_NAMES", "ModelFactory", "build_model"]
