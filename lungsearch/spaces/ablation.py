"""Ablation around the report's models: which of its choices matter, and by how much?

The report compared three hand-picked points (base, +BatchNorm+augmentation, +Dropout). This space
searches the same knobs continuously: BatchNorm on/off, augmentation on/off and its strength, the
Dropout rate, the dense layer's width, the learning rate and the batch size. The architecture is the
report's (three conv blocks, 32-64-128 filters, flatten head).

    python -m lungsearch run spaces/ablation.py --data DIR               # full search
    python -m lungsearch run spaces/ablation.py --data DIR --smoke       # a few minutes on 2 CPU cores
"""
import keras_tuner as kt

hp = kt.HyperParameters()
hp.Boolean("batchnorm")
hp.Boolean("augment")
with hp.conditional_scope("augment", [True]):  # strengths only matter with augmentation on
    hp.Float("aug_rotation", 0.0, 30.0, step=5.0)
    hp.Float("aug_zoom", 0.0, 0.3, step=0.05)
    hp.Float("aug_shift", 0.0, 0.3, step=0.05)
hp.Float("dropout", 0.0, 0.6, step=0.1)
hp.Int("dense_units", 32, 512, sampling="log")
hp.Float("learning_rate", 1e-4, 1e-2, sampling="log")
hp.Choice("batch_size", [16, 32, 64, 128])

SETTINGS = {
    "num_samples": 24,
    "max_epochs": 30,
    "grace_period": 3,
    "reduction_factor": 3,
    "seed": 0,
}
