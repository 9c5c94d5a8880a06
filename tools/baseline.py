"""What a learned model has to beat: logistic regression on clip log-mel statistics, for any dataset a config reads.

Features: per mel band, the mean and the standard deviation over time of a dense log-mel of the whole clip (the
config's window, hop = half the window; 2 x 128 values), standardised on the training split. Classifier:
scikit-learn's logistic regression (one multinomial model per task; one-vs-rest for multi-label data), its inverse
regularisation C picked among 1e-3 ... 1e2 on a held-out fifth of the training split, then refitted on all of it. Reported on the test
split with the framework's metrics (the keys of the "test_final" line of metrics.jsonl). Example::

    python tools/baseline.py --cfg configs/Demo/MViT_pretrain.yaml --json runs/baseline.json TRAIN.DATASET custom \\
        TEST.DATASET custom CUSTOM.AUDIO_DATA_DIR data/sound_scenes/audio \\
        CUSTOM.ANNOTATIONS_DIR data/sound_scenes/annotations MODEL.NUM_CLASSES 16 AUDIO_DATA.CLIP_SECS 5.0
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from playitback.config import derived
from playitback.data.build import build_label_space
from playitback.data.statistics import clip_statistics
from playitback.metrics import classification_metrics
from playitback.utils.cli import config_tool_parser, load_tool_config

C_GRID = np.logspace(-3, 2, 6)


def _labels(records: list, cfg) -> np.ndarray:
    """Single-label: ids [N]; multi-label: multi-hot [N, K]; several tasks: ids [N, tasks]."""
    if cfg.DATA.MULTI_LABEL:
        hot = np.zeros((len(records), sum(derived.class_counts(cfg))), dtype=np.float32)
        for row, record in enumerate(records):
            hot[row, list(record.labels)] = 1.0
        return hot
    ids = np.array([record.labels for record in records], dtype=np.int64)
    return ids if cfg.MODEL.MULTITASK else ids[:, 0]


def fit_and_score(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, class_counts: list[int],
                  multi_label: bool) -> tuple[np.ndarray, list[float]]:
    """Fit the baseline on (train_x [N, D], train_y) and score test_x: scores [M, sum(class_counts)] (log-probabilities;
    decision values for multi-label) and the C picked per task.

    C is picked on a held-out fifth of the training split (accuracy; micro-averaged precision for multi-label), then
    the model is refitted on the whole training split.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x)
    train_z, test_z = scaler.transform(train_x), scaler.transform(test_x)
    held_out = np.random.default_rng(0).permutation(len(train_z)) < len(train_z) // 5
    if multi_label:
        def precision(c: float) -> float:
            model = OneVsRestClassifier(LogisticRegression(C=c, max_iter=1000))
            model.fit(train_z[~held_out], train_y[~held_out])
            return float(average_precision_score(train_y[held_out], model.decision_function(train_z[held_out]),
                                                 average="micro"))

        best = max(C_GRID, key=precision)
        model = OneVsRestClassifier(LogisticRegression(C=best, max_iter=1000)).fit(train_z, train_y)
        return model.decision_function(test_z), [float(best)]
    tasks = train_y[:, None] if train_y.ndim == 1 else train_y
    scores, picked = [], []
    for task, count in enumerate(class_counts):
        labels = tasks[:, task]
        # Weak to strong regularisation along one warm-started path: each fit starts from the previous solution.
        path = LogisticRegression(max_iter=1000, warm_start=True)
        accuracy = {}
        for c in C_GRID:
            path.set_params(C=c).fit(train_z[~held_out], labels[~held_out])
            accuracy[float(c)] = float(np.mean(path.predict(train_z[held_out]) == labels[held_out]))
        best = max(accuracy, key=lambda c: (accuracy[c], -c))
        model = LogisticRegression(C=best, max_iter=1000).fit(train_z, labels)
        log_probs = np.full((len(test_z), count), -1e9)  # classes absent from the training split
        log_probs[:, model.classes_] = model.predict_log_proba(test_z)
        scores.append(log_probs)
        picked.append(best)
    return np.concatenate(scores, axis=1), picked


def main(argv: list[str] | None = None) -> int:
    """Extract the features, fit, test and print the metrics; returns the process exit code."""
    parser = config_tool_parser(__doc__)
    parser.add_argument("--json", default=None, help="also write the metrics (and the settings) to this file")
    args = parser.parse_args(argv)
    cfg = load_tool_config(args)
    if cfg is None:
        return 2
    began = time.perf_counter()
    train_x, train_records = clip_statistics(cfg, "train")
    test_x, test_records = clip_statistics(cfg, "test")
    extracted = time.perf_counter()
    counts = derived.class_counts(cfg)
    scores, picked = fit_and_score(train_x, _labels(train_records, cfg), test_x, counts, cfg.DATA.MULTI_LABEL)
    metrics = classification_metrics(scores, _labels(test_records, cfg), build_label_space(cfg))
    result = {"split": "baseline_test", "features": "log-mel band mean+std", "train_clips": len(train_records),
              "test_clips": len(test_records), "C": picked, **metrics,
              "features_s": round(extracted - began, 1), "fit_s": round(time.perf_counter() - extracted, 1)}
    print(json.dumps(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
