"""dl09-keras: adaptive optimizers and the SSD, RPN and Faster R-CNN detectors in Keras 3.

Importing the package registers its custom layers, losses and optimizers with
Keras, so ``keras.saving.load_model`` reloads saved models in safe mode.
"""

import os

# Keras reads the backend before its first import; this library is written for TensorFlow.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from dl09_keras import layers as _layers  # noqa: E402,F401  (registers custom objects)
from dl09_keras import losses as _losses  # noqa: E402,F401
from dl09_keras import optimizers as _optimizers  # noqa: E402,F401
from dl09_keras.models import faster_rcnn as _faster_rcnn  # noqa: E402,F401

__version__ = "0.1.0"
