"""scikit-learn-shaped facade: ``RAFTRegressor(model=..., method="raft").fit(texts, y).predict(texts)``."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from raftlm import uncertainty
from raftlm.config import Config
from raftlm.core import Example, RaftlmError


class RAFTRegressor:
    """Fine-tune a causal LM for regression (RAFT by default) and predict with a decision rule.

    ``texts`` may be strings (rendered through ``prompt_template``'s ``{text}``) or dicts of fields.
    """

    def __init__(
        self,
        model: str = "gemma-3-270m",
        method: str = "raft",
        grid: str | None = "1-5",
        prompt_template: str = "{text}",
        target_range: str | list | None = "auto",
        decoder: str = "rail",
        normalize_grid: bool = False,
        trainable: str = "full",
        max_steps: int = 100,
        batch_size: int = 16,
        lr: float = 1e-5,
        optimizer: str = "adafactor",
        eval_steps: int = 50,
        bf16: bool = False,
        max_length: int = 512,
        seed: int = 0,
        output_dir: str | None = None,
    ):
        self.model = model
        self.method = method
        self.grid = grid
        self.prompt_template = prompt_template
        self.target_range = target_range
        self.decoder = decoder
        self.normalize_grid = normalize_grid
        self.trainable = trainable
        self.max_steps = max_steps
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.eval_steps = eval_steps
        self.bf16 = bf16
        self.max_length = max_length
        self.seed = seed
        self.output_dir = output_dir

    def _config(self, output_dir: str) -> Config:
        return Config.build(
            {
                "model": {"name": self.model, "trainable": self.trainable},
                "data": {"max_length": self.max_length},
                "method": {
                    "method": self.method,
                    "grid": self.grid,
                    "normalize_grid": self.normalize_grid,
                    "target_range": "none" if self.target_range is None else self.target_range,
                },
                "training": {
                    "output_dir": output_dir,
                    "max_steps": self.max_steps,
                    "batch_size": self.batch_size,
                    "lr": self.lr,
                    "optimizer": self.optimizer,
                    "eval_steps": self.eval_steps,
                    "bf16": self.bf16,
                    "seed": self.seed,
                },
                "eval": {"decoder": self.decoder, "bf16": self.bf16},
            }
        )

    def _examples(self, texts, y=None) -> list[Example]:
        from raftlm.prompts import render

        if y is not None and len(texts) != len(y):
            raise RaftlmError(f"got {len(texts)} texts but {len(y)} targets: pass one target per text")
        rows = [t if isinstance(t, dict) else {"text": t} for t in texts]
        return [
            Example(render(self.prompt_template, r), None if y is None else float(y[i]))
            for i, r in enumerate(rows)
        ]

    def fit(self, texts, y, eval_set: tuple | None = None) -> RAFTRegressor:
        """Fine-tune on (texts, y); ``eval_set=(texts, y)`` enables best-checkpoint selection by RMSE."""
        from raftlm.pipeline import make_trainable, new_predictor
        from raftlm.training import fit

        train = self._examples(texts, y)
        val = self._examples(*eval_set) if eval_set is not None else []
        run_dir = Path(self.output_dir or tempfile.mkdtemp(prefix="raftlm-"))
        cfg = self._config(str(run_dir))
        self.predictor_ = new_predictor(cfg, train, self.prompt_template)
        if self.method != "none":
            make_trainable(self.predictor_, cfg)
            self.train_summary_ = fit(self.predictor_, train, val, cfg, run_dir)
        if val:  # as `raftlm train` does: conformal calibration on the validation set
            self.calibration_ = uncertainty.calibrate(self.predictor_, val, self.batch_size, self.bf16)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "predictor_"):
            raise RaftlmError(
                "this RAFTRegressor is not fitted: call fit(texts, y) or RAFTRegressor.load(dir)"
            )

    def predict(self, texts, decoder: str | None = None, return_std: bool = False):
        """Point predictions; with ``return_std`` also the std of the grid distribution (data units),
        as (y_mean, y_std) like GaussianProcessRegressor."""
        self._check_fitted()
        preds = self._predictions(texts, decoder)
        if not return_std:
            return preds.values
        X = uncertainty.features(self.predictor_, preds)
        if X.shape[1] < 2:
            raise RaftlmError(
                "return_std reads the grid distribution, and this model predicts one number (a head): "
                "use calibrate(texts, y) and predict_interval (residual intervals)"
            )
        return preds.values, uncertainty.grid_std(uncertainty.data_values(self.predictor_), X)

    def _predictions(self, texts, decoder: str | None = None):
        ex = self._examples(texts)
        return self.predictor_.predict(
            [e.text for e in ex], decoder or self.decoder, self.batch_size, bf16=self.bf16
        )

    def calibrate(self, texts, y) -> RAFTRegressor:
        """Split-conformal calibration on labelled examples the model did not train on (``fit`` does it
        on ``eval_set``); ``save`` keeps it."""
        self._check_fitted()
        self.calibration_ = uncertainty.calibrate(
            self.predictor_, self._examples(texts, y), self.batch_size, self.bf16, source="calibrate()"
        )
        return self

    def predict_interval(self, texts, confidence_level=0.9, kind: str = "auto"):
        """(predictions (n,), intervals (n, 2, n_levels)) as MAPIE 1.x returns them: [:, 0, j] lower and
        [:, 1, j] upper bound at ``confidence_level`` (a float or a list). ``kind``: absolute, std, cqr
        (split conformal; need ``calibrate``), grid (raw quantiles); auto = cqr, or absolute for heads."""
        self._check_fitted()
        levels = [uncertainty.check_level(c) for c in np.atleast_1d(confidence_level)]
        cal = getattr(self, "calibration_", None)
        preds = self._predictions(texts)
        X = uncertainty.features(self.predictor_, preds)
        if cal is None:
            if kind != "grid":
                raise RaftlmError(
                    "this RAFTRegressor is not calibrated: call calibrate(texts, y) (or fit with eval_set), "
                    "or pass kind='grid' for the raw, uncalibrated grid quantiles"
                )
            cal = uncertainty.Calibration.uncalibrated(self.predictor_, X)
        lower, upper = cal.intervals(X, levels, kind, uncertainty.center_rule(self.decoder))
        return preds.values, np.stack([lower, upper], axis=1)

    def predict_proba(self, texts) -> np.ndarray:
        """Grid probabilities p(str(y)|x), shape (n, len(grid))."""
        self._check_fitted()
        return np.exp(
            self.predictor_.grid_log_probs(
                [e.text for e in self._examples(texts)], self.batch_size, self.bf16
            )
        )

    def score(self, texts, y) -> float:
        """R^2 of the predictions, as scikit-learn regressors do."""
        from raftlm.metrics import regression_metrics

        return regression_metrics(y, self.predict(texts))["r2"]

    def save(self, directory: str) -> Path:
        """The model, its tokenizer, ``raftlm.json`` and a model card (README.md) in ``directory``."""
        from raftlm.modelcard import write_model_card

        self._check_fitted()
        path = self.predictor_.save(directory)
        if getattr(self, "calibration_", None) is not None:
            self.calibration_.save(path)
        write_model_card(path)
        return path

    @classmethod
    def load(cls, directory: str, device: str = "auto", dtype: str = "auto") -> RAFTRegressor:
        """A saved run on ``device`` (auto: the GPU if there is one, else the CPU) with weights in
        ``dtype`` (auto: bfloat16 on a GPU, else float32)."""
        from raftlm.predictor import Predictor

        predictor = Predictor.load(directory, device, dtype)
        reg = cls(model=str(directory), method=predictor.method, prompt_template=predictor.template)
        reg.predictor_ = predictor
        if (cal := uncertainty.Calibration.load(directory)) is not None:
            reg.calibration_ = cal
        return reg
