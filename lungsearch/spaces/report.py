"""The source report's three models, and nothing else.

Question: how do the report's base CNN, its BatchNorm + augmentation variant and that with Dropout
compare on this dataset and split?

    python -m lungsearch run spaces/report.py --data DIR --split report
"""

SETTINGS = {"num_samples": 0}
