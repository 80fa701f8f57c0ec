"""The scikit-learn estimator: ``RAFTRegressor(model=..., method="raft").fit(X, y).predict(X)``.

``clone``, ``GridSearchCV``, ``cross_val_score`` and pipelines work: ``__init__`` only stores its
keyword arguments, fitted state ends in ``_``, and ``score`` is R^2 (``RegressorMixin``).
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin

from raftlm import methods, uncertainty
from raftlm.config import Config, MethodConfig, ModelConfig, TrainConfig, to_bf16
from raftlm.core import Example, RaftlmError, Splits
from raftlm.data import IN_MEMORY
from raftlm.files import parse_target
from raftlm.prompts import render, template_fields
from raftlm.run import load_run, save_run


class RAFTRegressor(RegressorMixin, BaseEstimator):
    """Fine-tune a causal LM for regression (RAFT by default) and predict with a decision rule.

    ``X`` may be a list, a numpy array or a pandas Series of strings (each fills ``{text}`` of
    ``prompt_template``), a list of dicts, or a pandas DataFrame (its columns fill the template's
    fields); ``y`` a list, array or Series of numbers. Rows pair up by position, never by index label.

    ``fit`` trains through the same path as ``raftlm train`` (``pipeline.fit_run``): into
    ``output_dir`` as a full run directory (config.yaml, model, metrics.jsonl, eval_results.json), or
    into a temporary directory that is deleted afterwards when ``output_dir`` is None (as it should
    be in a grid search, where every fit would write the same directory).
    """

    def __init__(
        self,
        model: str = ModelConfig.name,
        method: str = "raft",
        grid: str | None = "1-5",
        prompt_template: str = "{text}",
        target_range: str | list | None = "auto",
        decoder: str = "rail",
        normalize_grid: bool = False,
        ce_weight: float | None = None,
        ce_target: str | None = MethodConfig.ce_target,
        # raftlm train's defaults (benchmarks/results/frontier.md), read from the config, not restated
        trainable: str = ModelConfig.trainable,
        max_steps: int = TrainConfig.max_steps,
        batch_size: int = TrainConfig.batch_size,
        lr: float = TrainConfig.lr,
        optimizer: str = TrainConfig.optimizer,
        eval_steps: int = TrainConfig.eval_steps,
        patience: int | None = None,
        bf16: bool | str = False,
        max_length: int = 512,
        seed: int = 0,
        output_dir: str | None = None,
        overwrite: bool = False,
        progress_bar: bool = True,
        callbacks: list | None = None,
    ):
        self.model = model
        self.method = method
        self.grid = grid
        self.prompt_template = prompt_template
        self.target_range = target_range
        self.decoder = decoder
        self.normalize_grid = normalize_grid
        self.ce_weight = ce_weight
        self.ce_target = ce_target
        self.trainable = trainable
        self.max_steps = max_steps
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.eval_steps = eval_steps
        self.patience = patience
        self.bf16 = bf16
        self.max_length = max_length
        self.seed = seed
        self.output_dir = output_dir
        self.overwrite = overwrite
        self.progress_bar = progress_bar
        self.callbacks = callbacks

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array, tags.input_tags.string, tags.input_tags.dict = False, True, True
        return tags

    def _config(self, output_dir: str | None) -> Config:
        """The run's config, converted and validated like a YAML recipe (``lr="1e-4"`` is accepted)."""
        return Config.build(
            {
                "model": {"name": self.model, "trainable": self.trainable},
                "data": {
                    "dataset": IN_MEMORY,
                    "template": self.prompt_template,
                    "max_length": self.max_length,
                },
                "method": {
                    "method": self.method,
                    "grid": self.grid,
                    "normalize_grid": self.normalize_grid,
                    "ce_weight": self.ce_weight,
                    "ce_target": self.ce_target,
                    "target_range": "none" if self.target_range is None else self.target_range,
                },
                "training": {
                    "output_dir": output_dir,
                    "max_steps": self.max_steps,
                    "batch_size": self.batch_size,
                    "lr": self.lr,
                    "optimizer": self.optimizer,
                    "eval_steps": self.eval_steps,
                    "patience": self.patience,
                    "bf16": self.bf16,
                    "seed": self.seed,
                    "progress_bar": self.progress_bar,
                },
                "eval": {"decoder": self.decoder, "bf16": self.bf16, "batch_size": self.batch_size},
            }
        )

    def fit(self, X, y, eval_set: tuple | None = None) -> RAFTRegressor:
        """Fine-tune on (X, y); ``eval_set=(X_val, y_val)`` validates every ``eval_steps`` and keeps the
        checkpoint with the best RMSE (and enables ``patience``)."""
        from raftlm.pipeline import fit_run, new_predictor

        train = examples_from(X, y, self.prompt_template)
        val = []
        if eval_set is not None:
            X_val, y_val = eval_set
            val = examples_from(X_val, y_val, self.prompt_template)
        if not methods.get(self.method).trains:  # zero-shot: bind the grid and scaling, train nothing
            self.predictor_ = new_predictor(self._config(None), train, self.prompt_template)
            self.train_summary_ = {}
            return self
        splits = Splits(train, val, [], self.prompt_template, grid="1-5", target_range="auto")
        with self._run_dir() as run_dir:
            run = fit_run(
                self._config(str(run_dir)),
                overwrite=self.overwrite,
                splits=splits,
                callbacks=list(self.callbacks or ()),
            )
            # as `raftlm train`: conformal calibration on the validation set (None without eval_set)
            self.calibration_ = uncertainty.Calibration.load(run_dir)
        self.predictor_, self.train_summary_ = run.predictor, run.results["train"]
        return self

    @contextlib.contextmanager
    def _run_dir(self):
        if self.output_dir is not None:
            yield Path(self.output_dir)
            return
        with tempfile.TemporaryDirectory(prefix="raftlm-") as tmp:
            yield Path(tmp) / "run"

    def _bf16(self) -> bool:
        """``bf16`` at inference, ``"auto"`` resolved for the device the model is on."""
        return to_bf16(self.bf16, "bf16", self.predictor_.device.type)

    def _check_fitted(self) -> None:
        if not hasattr(self, "predictor_"):
            raise RaftlmError("this RAFTRegressor is not fitted: call fit(X, y) or RAFTRegressor.load(dir)")

    def predict(self, X, decoder: str | None = None, return_std: bool = False):
        """Point predictions; with ``return_std`` also the std of the grid distribution (data units),
        as (y_mean, y_std) like GaussianProcessRegressor."""
        self._check_fitted()
        preds = self._predictions(X, decoder)
        if not return_std:
            return preds.values
        features = uncertainty.features(self.predictor_, preds)
        if features.shape[1] < 2:
            raise RaftlmError(
                "return_std reads the grid distribution, and this model predicts one number (a head): "
                "use calibrate(X, y) and predict_interval (residual intervals)"
            )
        return preds.values, uncertainty.grid_std(uncertainty.data_values(self.predictor_), features)

    def _predictions(self, X, decoder: str | None = None):
        texts = [e.text for e in examples_from(X, None, self.prompt_template)]
        return self.predictor_.predict(texts, decoder or self.decoder, self.batch_size, bf16=self._bf16())

    def calibrate(self, X, y) -> RAFTRegressor:
        """Split-conformal calibration on labelled examples the model did not train on (``fit`` does it
        on ``eval_set``); ``save`` keeps it."""
        self._check_fitted()
        self.calibration_ = uncertainty.calibrate(
            self.predictor_,
            examples_from(X, y, self.prompt_template),
            self.batch_size,
            self._bf16(),
            source="calibrate()",
        )
        return self

    def predict_interval(self, X, confidence_level=0.9, kind: str = "auto"):
        """(predictions (n,), intervals (n, 2, n_levels)) as MAPIE 1.x returns them: [:, 0, j] lower and
        [:, 1, j] upper bound at ``confidence_level`` (a float or a list). ``kind``: absolute, std, cqr
        (split conformal; need ``calibrate``), grid (raw quantiles); auto = cqr, or absolute for heads."""
        self._check_fitted()
        levels = [uncertainty.check_level(c) for c in np.atleast_1d(confidence_level)]
        cal = getattr(self, "calibration_", None)
        preds = self._predictions(X)
        features = uncertainty.features(self.predictor_, preds)
        if cal is None:
            if kind != "grid":
                raise RaftlmError(
                    "this RAFTRegressor is not calibrated: call calibrate(X, y) (or fit with eval_set), "
                    "or pass kind='grid' for the raw, uncalibrated grid quantiles"
                )
            cal = uncertainty.Calibration.uncalibrated(self.predictor_, features)
        lower, upper = cal.intervals(features, levels, kind, uncertainty.center_rule(self.decoder))
        return preds.values, np.stack([lower, upper], axis=1)

    def predict_proba(self, X) -> np.ndarray:
        """Grid probabilities p(str(y)|x), shape (n, len(grid))."""
        self._check_fitted()
        texts = [e.text for e in examples_from(X, None, self.prompt_template)]
        return np.exp(self.predictor_.grid_log_probs(texts, self.batch_size, self._bf16()))

    def save(self, directory: str) -> Path:
        """The model, its tokenizer, ``raftlm.json`` and a model card (README.md) in ``directory``."""
        from raftlm.modelcard import write_model_card

        self._check_fitted()
        path = save_run(self.predictor_, directory)
        if getattr(self, "calibration_", None) is not None:
            self.calibration_.save(path)
        write_model_card(path)
        return path

    @classmethod
    def load(cls, directory: str, device: str = "auto", dtype: str = "auto") -> RAFTRegressor:
        """A saved run on ``device`` (auto: the GPU if there is one, else the CPU) with weights in
        ``dtype`` (auto: bfloat16 on a GPU, else float32)."""
        predictor = load_run(directory, device, dtype)
        reg = cls(model=str(directory), method=predictor.method, prompt_template=predictor.template)
        reg.predictor_ = predictor
        if (cal := uncertainty.Calibration.load(directory)) is not None:
            reg.calibration_ = cal
        return reg


def examples_from(X, y, template: str) -> list[Example]:
    """``X`` (and ``y``, None when predicting) as Examples, pairing rows by position."""
    rows = _rows(X, template)
    targets = [None] * len(rows) if y is None else _targets(y, len(rows))
    return [Example(render(template, r), t) for r, t in zip(rows, targets, strict=True)]


def _rows(X, template: str) -> list[dict]:
    """Template rows of ``X``, by position: a DataFrame's records, dicts, or texts as ``{"text": x}``."""
    if hasattr(X, "columns") and hasattr(X, "to_dict"):  # a pandas DataFrame
        rows = X.to_dict("records")
    elif getattr(X, "ndim", 1) != 1:
        raise RaftlmError(
            f"X has shape {X.shape}: give a 1-D sequence of texts, a list of dicts or a DataFrame"
        )
    else:
        rows = list(X)  # a Series iterates its values in order, whatever its index
        for i, x in enumerate(rows):
            if not isinstance(x, str | dict):
                raise RaftlmError(f"X[{i}] is {x!r}, not a text: give strings, dicts or a DataFrame")
        rows = [x if isinstance(x, dict) else {"text": x} for x in rows]
    for i, row in enumerate(rows):
        for name in template_fields(template):
            if name in row and _missing(row[name]):
                raise RaftlmError(f"X[{i}]: {name} is missing ({row[name]!r}): fill or drop the row")
    return rows


def _missing(value) -> bool:
    """None, NaN, or pandas' NA / NaT (which a template would print as 'nan' or '<NA>')."""
    is_nan = isinstance(value, float) and math.isnan(value)
    return value is None or is_nan or type(value).__name__ in ("NAType", "NaTType")


def _targets(y, n: int) -> list[float]:
    """``y`` by position (a pandas Series' index is ignored), each a finite number."""
    values = np.asarray(y.to_numpy() if hasattr(y, "to_numpy") else y, dtype=object)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1:
        raise RaftlmError(f"y has shape {values.shape}: give one number per row of X")
    if len(values) != n:
        raise RaftlmError(f"got {n} texts but {len(values)} targets: pass one target per text")
    return [parse_target(v, f"y[{i}]") for i, v in enumerate(values)]
