"""kcnn: the classic CNN playbook as Keras 3 software.

Importing :mod:`kcnn` is cheap: it never imports TensorFlow or Keras.
"""

__version__ = "0.1.0"
