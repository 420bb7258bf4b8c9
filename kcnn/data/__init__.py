"""Data: sources and splits, index samplers, tf.data pipelines.

Only :mod:`kcnn.data.pipeline` imports TensorFlow.
"""
