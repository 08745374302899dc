"""Architecture search: is there a better CNN for this data than the report's three-block model?

Searches depth (2-5 conv blocks), base filters (16-64) and their growth per block, kernel size, pooling,
the head (flatten vs global average pooling), residual connections, input size (96-224 px), class
weighting, and the report's own knobs (BatchNorm, Dropout, dense width, learning rate). Convolutions
use 'same' padding so every depth fits every input size. Under --smoke the input size is held at the
smoke size (48 px).

    python -m lungsearch run spaces/architecture.py --data DIR
    python -m lungsearch run spaces/architecture.py --data DIR --smoke
"""
import keras_tuner as kt

hp = kt.HyperParameters()
hp.Int("conv_blocks", 2, 5)
hp.Int("filters", 16, 64, step=16)
hp.Choice("filter_growth", [1.0, 1.5, 2.0])
hp.Choice("kernel_size", [3, 5])
hp.Choice("pooling", ["max", "avg"])
hp.Choice("head", ["flatten", "gap"])
hp.Boolean("residual")
hp.Fixed("padding", "same")
hp.Int("image_size", 96, 224, step=32)
hp.Boolean("class_weight")
hp.Boolean("batchnorm")
hp.Float("dropout", 0.0, 0.5, step=0.1)
hp.Int("dense_units", 32, 256, sampling="log")
hp.Float("learning_rate", 1e-4, 1e-2, sampling="log")

SETTINGS = {
    "num_samples": 32,
    "max_epochs": 30,
    "grace_period": 3,
    "reduction_factor": 3,
    "seed": 0,
}
