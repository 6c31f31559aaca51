"""The wire format's names at the import path producers have always used.

The format lives in :mod:`streamtrain.wire`, one module per format; this module re-exports
its public names so ``from streamtrain.schema import encode_binary`` keeps working.

>>> from streamtrain.schema import encode_json
>>> encode_json([0.5, 1.0], 1)
b'{"features":[0.5,1.0],"label":1}'
"""

from streamtrain.wire import *  # noqa: F403
from streamtrain.wire import __all__ as __all__
