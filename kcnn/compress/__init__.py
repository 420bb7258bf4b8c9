"""Model compression on Keras 3: pruning, low-rank factorization, weight clustering,
distillation, binary weights.

| module      | what                                                                  |
|-------------|-----------------------------------------------------------------------|
| prune.py    | magnitude pruning (masks) and filter pruning (a thinner model)        |
| lowrank.py  | truncated-SVD factorization of Dense and Conv2D layers                |
| cluster.py  | k-means weight sharing (scalar, product quantization), packed indices |
| distill.py  | knowledge distillation: the ``distill:`` recipe section               |
| binary.py   | packed storage of ``BinaryConv2D``/``BinaryDense`` weights            |
| common.py   | what the commands share: fine-tuning, measuring, writing the run dir  |

``kcnn compress prune|lowrank|cluster RUN_DIR`` reads a training run and writes a new
run dir that ``kcnn evaluate``/``kcnn export`` accept: the source's
``recipe.yaml`` and ``preprocess.json``, the compressed ``model.keras``,
``metrics.json``, ``history.csv`` (when fine-tuned), ``checkpoints/state.json``
and ``compress.json`` (source, settings, before → after).

Importing this package imports nothing heavy; the modules import Keras.
"""
