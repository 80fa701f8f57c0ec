"""The scikit-learn estimator: ``RAFTRegressor(model=..., method="raft").fit(X, y).predict(X)``.

``clone``, ``GridSearchCV``, ``cross_val_score`` and pipelines work: ``__init__`` only stores its
keyword arguments, fitted state ends in ``_``, and ``score`` is R^2 (``RegressorMixin``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.exceptions import NotFittedError

from raftlm import methods, uncertainty
from raftlm.config import (
    SECTIONS,
    Config,
    DataConfig,
    EvalConfig,
    MethodConfig,
    ModelConfig,
    TrainConfig,
    to_bf16,
)
from raftlm.core import Example, RaftlmError, Splits, short, warn
from raftlm.data import IN_MEMORY, SPLIT_NAMES, sample_train
from raftlm.decoders import TEXT_DECODERS, one_number, text_decoded
from raftlm.io import (
    FINAL_PREFIX,
    TRAINING_LOG,
    check_no_tilde,
    launch_size,
    move_into_run,
    on_rank_zero,
    output_lock,
    write_json,
    write_run_marker,
    write_text,
)
from raftlm.prompts import escape, render, resolve_template
from raftlm.rows import check_columns, parse_target, row_fields, text_rows
from raftlm.run import FINISHED_FILE, load_run, save_run

# what a fitted model is made of: set after fit, they apply at the next fit (scikit-learn's rule) and
# predictions keep the fitted model's, said once (`raftlm predict` refuses their flags for a trained run)
MODEL_PARAMS = (
    "model", "method", "trainable", "grid", "prompt_template", "max_length", "normalize_grid", "target_range",
    "pair_swap",
)  # fmt: skip
_NUMERIC = "feeds numeric features (an (n, k) array of numbers); RAFTRegressor reads text"
# check_estimator's checks that cannot apply to a text model, each with why (docs/python-api.md;
# tests/test_sklearn.py runs check_estimator with these as expected failures and pins the list). The
# others run and pass: cloning, params, repr, tags, NotFittedError before fit, sparse and y=None errors.
SKLEARN_EXPECTED_FAILURES = {
    "check_fit_score_takes_y": _NUMERIC,
    "check_estimators_overwrite_params": _NUMERIC,
    "check_dont_overwrite_parameters": _NUMERIC,
    "check_estimators_fit_returns_self": _NUMERIC + " (fit returns self: tests/test_api.py)",
    "check_readonly_memmap_input": _NUMERIC + " in read-only memory maps",
    "check_n_features_in_after_fitting": "n_features_in_ counts numeric columns; texts have no feature count",
    "check_positive_only_tag_during_fit": _NUMERIC + " (negative ones)",
    "check_estimators_dtypes": "numeric dtypes of X (float32, int64): features, not text",
    "check_complex_data": "complex numbers in X and y; neither is text or a real target",
    "check_dtype_object": "object arrays of numbers, expecting numeric conversion errors",
    "check_estimators_empty_data_messages": "expects scikit-learn's numeric wording for 0 features",
    "check_pipeline_consistency": _NUMERIC,
    "check_estimators_nan_inf": "NaN / inf in numeric X; a missing text is refused with raftlm's own row error",
    "check_estimators_pickle": _NUMERIC + " (a text fit pickles: tests/test_sklearn.py)",
    "check_f_contiguous_array_estimator": "memory layout of numeric arrays",
    "check_regressors_train": "a numeric regression problem with a score bar",
    "check_regressor_data_not_an_array": "an array-like of numbers",
    "check_regressors_no_decision_function": _NUMERIC,
    "check_supervised_y_2d": _NUMERIC,
    "check_regressors_int": _NUMERIC + " (integer ones)",
    "check_methods_sample_order_invariance": _NUMERIC + " (order invariance on text: tests/test_sklearn.py)",
    "check_methods_subset_invariance": _NUMERIC + " (batch invariance on text: tests/test_sklearn.py)",
    "check_fit2d_1sample": "expects scikit-learn's numeric wording for one sample",
    "check_fit2d_1feature": "one numeric feature column: a column of numbers is not text",
    "check_dict_unchanged": _NUMERIC,
    "check_fit_idempotent": _NUMERIC + " (refitting on text: tests/test_sklearn.py)",
    "check_fit_check_is_fitted": _NUMERIC + " (NotFittedError before fit passes check_estimators_unfitted)",
    "check_n_features_in": "n_features_in_ counts numeric columns; texts have no feature count",
    "check_fit2d_predict1d": _NUMERIC + "; 1-D X is how texts come, so predict takes it",
}


class NotFitted(RaftlmError, NotFittedError):
    """predict/score/save before fit: scikit-learn's NotFittedError, and raftlm's one-line error."""


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
        method: str = MethodConfig.method,
        grid: str | None = "1-5",
        prompt_template: str = "{text}",
        target_range: str | list | None = "auto",
        decoder: str = EvalConfig.decoder,
        normalize_grid: bool = MethodConfig.normalize_grid,
        ce_weight: float | None = None,
        ce_target: str | None = MethodConfig.ce_target,
        # raftlm train's defaults (benchmarks/results/frontier.md), read from the config, not restated
        trainable: str = ModelConfig.trainable,
        max_steps: int = TrainConfig.max_steps,
        batch_size: int = TrainConfig.batch_size,
        lr: float = TrainConfig.lr,
        optimizer: str = TrainConfig.optimizer,
        eval_steps: int = TrainConfig.eval_steps,
        patience: int | None = TrainConfig.patience,
        val_size: int | str | None = DataConfig.val_size,
        ema: float | None = TrainConfig.ema,
        bf16: bool | str = TrainConfig.bf16,
        max_length: int = DataConfig.max_length,
        pair_swap: str | None = None,
        seed: int = TrainConfig.seed,
        output_dir: str | None = None,
        overwrite: bool = False,
        progress_bar: bool = True,
        callbacks: list | None = None,
        settings: dict | None = None,
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
        self.val_size = val_size
        self.ema = ema
        self.bf16 = bf16
        self.max_length = max_length
        self.pair_swap = pair_swap
        self.seed = seed
        self.output_dir = output_dir
        self.overwrite = overwrite
        self.progress_bar = progress_bar
        self.callbacks = callbacks
        self.settings = settings

    def __sklearn_clone__(self) -> RAFTRegressor:
        """scikit-learn's ``clone``, but ``callbacks`` shared, not deep-copied: its default copies every
        parameter that is not an estimator (a list's items one by one), so a callback given to a grid search
        or ``cross_val_score`` would watch copies and never see a fit. Callbacks are observers, meant for
        every fit (as scikit-learn's own ``_skl_callbacks`` are passed by reference)."""
        bare = copy.copy(self)  # (a shallow copy: the rest, metadata requests too, is cloned as usual)
        bare.callbacks = None
        return super(RAFTRegressor, bare).__sklearn_clone__().set_params(callbacks=self.callbacks)

    def __sklearn_tags__(self):
        # texts (1-D, or one column of an (n, 1) array) and dicts; numeric features are refused (the
        # checks that feed them are SKLEARN_EXPECTED_FAILURES). two_d_array stays on: off, check_estimator
        # skips every check.
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array, tags.input_tags.string, tags.input_tags.dict = True, True, True
        tags.regressor_tags.poor_score = True  # a text model: no score bar on random numeric data
        return tags

    def _config(self, output_dir: str | None) -> Config:
        """The run's config, converted and validated like a YAML recipe (``lr="1e-4"`` is accepted):
        ``settings`` (a recipe's sections: ``{"training": {"warmup_steps": 0}}``), then the parameters."""
        return Config.build(merge_settings(self.settings, self._own(output_dir)))

    def _own(self, output_dir: str | None) -> dict:
        """The settings this estimator's parameters give, as recipe sections."""
        return {
            "model": {"name": self.model, "trainable": self.trainable},
            "data": {
                "dataset": IN_MEMORY,
                "template": self.prompt_template,
                "max_length": self.max_length,
                "pair_swap": self.pair_swap,
                "val_size": self.val_size,
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
                "ema": self.ema,
                "bf16": self.bf16,
                "seed": self.seed,
                "progress_bar": self.progress_bar,
            },
            # (eval.batch_size and eval.bf16 follow batch_size and bf16 unless settings give them: a run's
            # own, where they differ, are carried there)
            "eval": {"decoder": self.decoder},
        }

    def fit(self, X, y, eval_set: tuple | None = None) -> RAFTRegressor:
        """Fine-tune on (X, y); ``eval_set=(X_val, y_val)`` validates every ``eval_steps`` and keeps the
        checkpoint with the best RMSE (and enables ``patience``): on a seeded sample of ``val_size`` of its
        rows (default 300, in their order) when it has more, on all of them with ``val_size="all"``;
        calibration uses every row."""
        from raftlm.pipeline import fit_run, new_predictor, no_load_bars

        if y is None:  # scikit-learn's wording (check_requires_y_none)
            raise RaftlmError("RAFTRegressor requires y to be passed, but the target y is None: pass y")
        template = resolve_template(self.prompt_template)  # (once: a resolved template has no escapes left)
        train = examples_from(X, y, template)
        if not train:  # (said in the API's words: the pipeline's names a file and its split column)
            raise RaftlmError("fit got no rows: pass X and y with at least one row each")
        val = []
        if eval_set is not None:
            if not isinstance(eval_set, tuple | list) or len(eval_set) != 2 or eval_set[1] is None:
                raise RaftlmError(
                    f"eval_set is {short(eval_set)}: give (X_val, y_val), the validation rows and their targets"
                )
            val = examples_from(*eval_set, template, names=("eval_set X", "eval_set y"))
        # (a refit's calibration, log and placed copy are set with its model, once it has one: a refit that
        # fails leaves the earlier fit whole, not its model beside none of its calibration)
        if not methods.get(self.method).trains:  # zero-shot: bind the grid and scaling, train nothing
            if self.output_dir is not None:
                raise RaftlmError(
                    f"method {self.method!r} is zero-shot: fit trains nothing and writes no run into output_dir; "
                    "drop output_dir (save(dir) keeps the fitted model)"
                )
            predictor = new_predictor(self._config(None), train, template)
            self.predictor_, self.calibration_, self.training_log_ = predictor, None, None
            self.train_summary_, self.results_, self.config_ = {}, None, self._config(None)
            self._fitted()
            self._place()
            if val:  # as a trained fit: conformal calibration on the validation set
                self.calibrate(*eval_set)
            return self
        splits = Splits(train, val, [], template, grid="1-5", target_range="auto", file_order=SPLIT_NAMES)
        splits = sample_train(splits, self._config(None).data)  # data.train_size / train_fraction, as train
        if self.output_dir is None and (n := launch_size()) > 1:  # each process's temp folder is its own
            raise RaftlmError(
                f"fit under torchrun / accelerate launch ({n} processes) needs output_dir: every "
                "process trains into the same run directory"
            )
        with self._run_dir() as run_dir, no_load_bars(not self.progress_bar):  # (checkpoints' too)
            run = fit_run(
                self._config(str(run_dir)),
                overwrite=self.overwrite,
                splits=splits,
                callbacks=list(self.callbacks or ()),
                output_name="output_dir",
            )
            # as `raftlm train`: conformal calibration on the validation set (None without eval_set)
            calibration = uncertainty.Calibration.load(run_dir)
            log = _training_log(run_dir)  # save() writes it, as train leaves it
        self.calibration_, self.training_log_ = calibration, log
        self.predictor_, self.train_summary_ = run.predictor, run.results["train"]
        self.results_, self.config_ = run.results, self._config(None)
        self._fitted()
        self._place()
        return self

    def _place(self) -> None:
        """The fitted model as every command loads its run (``eval.device``, ``eval.dtype``: bfloat16 on a
        GPU), for predictions: train measured its test split and calibration on that copy, and `raftlm
        predict`, the server and ``load`` predict with it. ``predictor_`` stays as trained (float32), what
        ``save`` writes; a copy only where the placement differs (nothing on a CPU). ``eval.compile``
        compiles the model predictions come from, as those commands compile theirs."""
        from raftlm.pipeline import compile_for_eval, placed_for_eval

        placed = placed_for_eval(self.predictor_, self.config_)
        compile_for_eval(placed, self.config_)
        self._placed = None if placed is self.predictor_ else placed

    def _model(self):
        """The predictor predictions come from: the placed copy of a fitted model, or a loaded one."""
        self._say_unfitted_params()
        return getattr(self, "_placed", None) or self.predictor_

    def _fitted(self) -> None:
        """Remember the parameters the model was fitted (or loaded) with (``_say_unfitted_params``)."""
        self.model_params_ = {k: copy.deepcopy(getattr(self, k)) for k in MODEL_PARAMS}

    def _say_unfitted_params(self) -> None:
        """``set_params(max_length=5)`` after fit changed nothing until the next fit, in silence, beside
        decoder, batch_size, bf16 and seed, which apply at once: said once per change."""
        fitted = getattr(self, "model_params_", None) or {}
        changed = tuple(k for k, v in fitted.items() if _differs(getattr(self, k), v))
        if changed and changed != getattr(self, "_said_params", ()):
            was = ", ".join(f"{k}={short(fitted[k])}" for k in changed)
            warn(
                f"{', '.join(changed)} changed since the model was fitted: predictions come from the fitted model "
                f"({was}); a new value applies at the next fit(X, y)"
            )
        self._said_params = changed

    @contextlib.contextmanager
    def _run_dir(self):
        if self.output_dir is not None:
            yield Path(self.output_dir)
            return
        with tempfile.TemporaryDirectory(prefix="raftlm-") as tmp:
            yield Path(tmp) / "run"

    def _eval_settings(self):
        """``eval`` as the run's config has it, read from what decides it alone (``settings``' eval section,
        ``batch_size`` and ``bf16``, which it follows): predicting does not check the training settings
        (a ``set_params(lr=-1)`` after fit fails the next fit, not predict)."""
        given = dict(((self.settings or {}).get("eval") or {}) if isinstance(self.settings, dict) else {})
        return Config.build(
            {"training": {"batch_size": self.batch_size, "bf16": self.bf16}, "eval": given}
        ).eval

    def _eval_batch_size(self) -> int:
        """Rows per forward pass at prediction: ``eval.batch_size``, as `raftlm predict` and the server
        batch (``batch_size``'s unless ``settings`` give it; a loaded run's own)."""
        return self._eval_settings().batch_size

    def _bf16(self) -> bool:
        """``eval.bf16`` at inference (``bf16``'s unless ``settings`` give it), ``"auto"`` resolved for the
        device the model is on."""
        return to_bf16(self._eval_settings().bf16, "bf16", self._model().device.type)

    def __sklearn_is_fitted__(self) -> bool:  # (a failed first fit leaves calibration_, not a model)
        return hasattr(self, "predictor_")

    def _check_fitted(self) -> None:
        if not hasattr(self, "predictor_"):
            raise NotFitted("this RAFTRegressor is not fitted: call fit(X, y) or RAFTRegressor.load(dir)")

    def predict(self, X, decoder: str | None = None, return_std: bool = False):
        """Point predictions; with ``return_std`` also the std of the grid distribution (data units),
        as (y_mean, y_std) like GaussianProcessRegressor."""
        self._check_fitted()
        if return_std:
            self._check_grid_decoder(decoder or self.decoder, "return_std")
        preds = self._predictions(X, decoder)
        if not return_std:
            return preds.values
        features = uncertainty.features(self.predictor_, preds)
        if features.shape[1] < 2:
            raise RaftlmError(
                one_number("return_std", "use calibrate(X, y) and predict_interval (residual intervals)")
            )
        p = self.predictor_
        probs, _ = uncertainty.split_features(features, p.grid.values)  # (a shift moves no std)
        return preds.values, uncertainty.grid_std(
            uncertainty.data_values(p), probs, uncertainty.predictor_rest(p)
        )

    def _check_grid_decoder(self, decoder: str, what: str) -> None:
        """Before any text is decoded: ``what`` reads the grid distribution, which a text decoder lacks
        (a head run's own refusal of such a decoder comes from ``Predictor.decoder_name``)."""
        p = self.predictor_
        p.decoder_name(decoder)
        if decoder in TEXT_DECODERS and p.head is None:
            raise RaftlmError(
                text_decoded(what, f"decoder={decoder!r}", "use decoder 'rail', 'mode' or 'median'")
            )

    def _examples(self, X) -> list:
        return examples_from(X, None, self.predictor_.template)

    def _predictions(self, X, decoder: str | None = None):
        """Predictions as `raftlm predict` makes them for this run: sample-rail with the run's sampling
        settings (``eval.num_samples``, ``temperature``, ``max_new_tokens``) and ``seed``, as the command
        line reads them from its config.yaml (``--seed`` there, ``set_params(seed=...)`` here); settings
        given since (``set_params(settings=...)``, as ``--num-samples``) win, as batch_size and bf16 do."""
        p, decoder, e = self._model(), decoder or self.decoder, self._eval_settings()
        preds = p.predict(
            p.texts_of(self._examples(X)),
            decoder,
            self._eval_batch_size(),
            e.num_samples,
            e.temperature,
            e.max_new_tokens,
            self._bf16(),
            self.seed,
        )
        return p.average_orders(preds, decoder)  # (both orders of a symmetric pair)

    def prompts(self, X) -> list[str]:
        """The prompt each row of ``X`` becomes (the template filled in), exactly as the model reads it."""
        fitted = hasattr(self, "predictor_")
        template = self.predictor_.template if fitted else resolve_template(self.prompt_template)
        return [e.text for e in examples_from(X, None, template)]

    def calibrate(self, X, y) -> RAFTRegressor:
        """Split-conformal calibration on labelled examples the model did not train on (``fit`` does it
        on ``eval_set``), and, as ``raftlm calibrate`` does, SmoothQuant's int8 activation maxima measured
        on them (unless the model is int8 already); ``save`` keeps both."""
        self._check_fitted()
        examples = examples_from(X, y, self.predictor_.template)  # the prompts predict reads
        uncertainty.warn_calibration("calibrate()", len(examples), who="calibrate()")  # as `raftlm calibrate`
        self.calibration_ = uncertainty.calibrate(
            self._model(),
            examples,
            self._eval_batch_size(),
            self._bf16(),
            source="calibrate()",
            desc="calibrate" if self.progress_bar else None,
        )
        from raftlm.models import is_int8

        if not is_int8(self.predictor_.model):
            self.predictor_.record_int8_maxima(examples, "calibrate()", batch_size=self._eval_batch_size())
        return self

    def predict_interval(self, X, confidence_level=0.9, kind: str = "auto"):
        """(predictions (n,), intervals (n, 2, n_levels)) as MAPIE 1.x returns them: [:, 0, j] lower and
        [:, 1, j] upper bound at ``confidence_level`` (a float or a list). ``kind``: absolute, std, cqr
        (split conformal; need ``calibrate``), grid (raw quantiles); auto: the run's ``eval.interval_kind``
        (as `raftlm predict --interval` and the server take it), whose own auto is cqr, or absolute for a
        head without a grid distribution."""
        self._check_fitted()
        if kind == "auto":
            kind = self._eval_settings().interval_kind
        given = np.atleast_1d(np.asarray(confidence_level, dtype=object))
        if given.ndim != 1 or not len(given):  # ([] gave intervals of no level; [[0.8, 0.9]] a ValueError)
            raise RaftlmError(
                f"confidence_level {short(confidence_level)}: give a level between 0 and 1, or a list of them"
            )
        levels = [uncertainty.check_level(c) for c in given]
        if kind != "auto" and kind not in uncertainty.KINDS:
            raise RaftlmError(
                f"unknown interval kind {short(kind)}: use one of {list(uncertainty.KIND_CHOICES)}"
            )
        self._check_grid_decoder(self.decoder, "predict_interval")
        cal = getattr(self, "calibration_", None)
        if cal is None and kind != "grid":  # (these before predicting every row, as `raftlm predict`)
            raise RaftlmError(
                "this RAFTRegressor is not calibrated: call calibrate(X, y) (or fit with eval_set), "
                "or pass kind='grid' for the raw, uncalibrated grid quantiles"
            )
        if cal is not None:
            cal.check_levels(levels, kind)
        preds = self._predictions(X)
        features = uncertainty.features(self.predictor_, preds)
        if cal is None:
            cal = uncertainty.Calibration.uncalibrated(self.predictor_, features)
        lower, upper = cal.intervals(features, levels, kind, uncertainty.center_rule(self.decoder))
        return preds.values, np.stack([lower, upper], axis=1)

    def score(self, X, y, sample_weight=None) -> float:
        """R^2 of the predictions (scikit-learn's ``r2_score``) against the targets as the row contract reads
        them (a NaN or non-numeric target is a one-line error naming the row, and "3.5" is 3.5, as in
        ``fit``); NaN when a prediction is not finite (a diverged model), as `raftlm evaluate` reports it."""
        from sklearn.metrics import r2_score

        self._check_fitted()
        if isinstance(X, Iterator):  # (read twice below: a generator's rows would be gone the second time)
            X = list(X)
        examples = examples_from(X, y, self.predictor_.template)
        if len(examples) < 2:
            raise RaftlmError("score (R^2) needs at least 2 examples: score more examples")
        preds = np.asarray(self.predict(X), dtype=float)
        if not np.isfinite(preds).all():
            return float("nan")
        return float(r2_score([e.target for e in examples], preds, sample_weight=sample_weight))

    def predict_proba(self, X) -> np.ndarray:
        """Grid probabilities p(str(y)|x), shape (n, len(grid)). raft-head: the LM's grid distribution, whose
        mean plus the head's correction is the prediction."""
        self._check_fitted()
        p = self._model()
        if not p.has_grid:
            raise RaftlmError(one_number("predict_proba", "it has no grid probabilities"))
        # (a text decoder's numbers come from no distribution: refused, as the server's with_probs is)
        self._check_grid_decoder(self.decoder, "predict_proba")
        texts = p.texts_of(self._examples(X))
        # a symmetric pair: the mean of both orders' distributions, as every prediction averages them
        preds = p.predict(texts, "rail", self._eval_batch_size(), bf16=self._bf16())
        return p.average_orders(preds, "rail").probs

    def save(self, directory: str) -> Path:
        """The model, its tokenizer, ``raftlm.json``, the settings (``config.yaml``), the calibration, the
        metrics (``eval_results.json``) and the model card (README.md, the one ``raftlm train`` writes for
        the run) in ``directory``: a run directory as ``raftlm train`` writes it, marked as raftlm's. An
        existing run there is replaced only with ``overwrite=True`` (once the new one is complete); a
        folder that is not a raftlm run is never written into."""
        from raftlm.run import writable_place

        self._check_fitted()
        check_no_tilde(directory, "directory")
        # (the checks and the lock of `raftlm train`'s run directory)
        out = writable_place(Path(directory), "directory")
        return on_rank_zero(lambda: self._save_into(out))

    def _save_into(self, out: Path) -> Path:
        from raftlm.io import disk_error, make_folder
        from raftlm.modelcard import write_model_card
        from raftlm.pipeline import no_load_bars
        from raftlm.run import check_run_dir, discard_failed, discard_staged, swap_in

        with output_lock(out, "the run directory"):
            build = check_run_dir(out, self.overwrite, resume=False, name="directory")
            if build != out:
                discard_staged(build, out)
            created = not build.exists()
            make_folder(build, f"run directory {out}", "choose a writable directory")
            write_run_marker(build)
            try:
                # (saved beside, then listed and moved in: a file a user put there is never taken for raftlm's)
                with (
                    no_load_bars(not self.progress_bar),
                    tempfile.TemporaryDirectory(dir=build, prefix=FINAL_PREFIX) as tmp,
                ):
                    save_run(self.predictor_, Path(tmp))
                    move_into_run(build, list(Path(tmp).iterdir()), "save again")
                write_text(build / "config.yaml", self._saved_config().to_yaml())
                if getattr(self, "calibration_", None) is not None:
                    self.calibration_.save(build)
                write_model_card(build, getattr(self, "results_", None))
                if (log := getattr(self, "training_log_", None)) is not None:
                    write_text(build / TRAINING_LOG, log)
                # last, as `raftlm train` writes it: the metrics (so a later load().save() keeps them), and
                # what makes the run a finished one
                write_json(build / FINISHED_FILE, getattr(self, "results_", None) or {})
            except BaseException as err:  # nothing half-written: the new directory (or staged run) goes
                discard_failed(build, out, created)
                if isinstance(err, OSError):
                    raise disk_error(err, out, "save again") from None
                raise
            if build != out:
                swap_in(build, out)
        return out

    def push_to_hub(self, repo_id: str, private: bool = False, revision: str | None = None) -> str:
        """Upload the fitted model to the Hugging Face Hub repository ``repo_id`` (created if missing) as
        ``save`` writes it: weights, tokenizer, ``raftlm.json``, ``config.yaml``, the calibration, the
        metrics and the model card (``raftlm push`` of a temporary save). Returns the commit's URL;
        offline, a one-line error before anything is saved."""
        from raftlm.hub import check_online, push
        from raftlm.run import writable_place

        self._check_fitted()
        check_online(repo_id)

        def save_and_push() -> str:
            with tempfile.TemporaryDirectory(prefix="raftlm-push-") as tmp:
                saved = self._save_into(writable_place(Path(tmp) / "run"))
                return push(saved, repo_id, private=private, revision=revision)

        return on_rank_zero(save_and_push)

    def _saved_config(self) -> Config:
        """The settings this estimator trained with (a loaded one's are its run's)."""
        return getattr(self, "config_", None) or self._config(None)

    @classmethod
    def load(cls, directory: str, device: str | None = None, dtype: str | None = None) -> RAFTRegressor:
        """A saved run on ``device`` (auto: the GPU if there is one, else the CPU) with weights in
        ``dtype`` (auto: bfloat16 on a GPU, else float32); each by default the run's own (its
        ``eval.device`` / ``eval.dtype``, as `raftlm predict` and the server load it). Its parameters
        (``get_params``) are the run's own settings, so ``clone(loaded).fit(X, y)`` trains the same way
        again."""
        saved = _run_config(Path(directory))
        device = device or (saved.eval.device if saved else "auto")
        dtype = dtype or (saved.eval.dtype if saved else "auto")
        from raftlm.pipeline import compile_for_eval

        predictor = load_run(directory, device, dtype)
        compile_for_eval(predictor, saved)
        reg = cls(**run_params(Path(directory), predictor))
        reg.predictor_ = predictor
        reg.config_ = saved
        reg._fitted()
        if (Path(directory) / FINISHED_FILE).is_file():  # save() puts its metrics in the card again
            reg.results_ = json.loads((Path(directory) / FINISHED_FILE).read_text()) or None  # {}: none
        if (cal := uncertainty.Calibration.load(directory, required=False)) is not None:
            reg.calibration_ = cal
        reg.training_log_ = _training_log(Path(directory))
        return reg


def _differs(a, b) -> bool:
    try:
        return bool(np.any(np.asarray(a, dtype=object) != np.asarray(b, dtype=object)))
    except (TypeError, ValueError):  # (shapes that do not compare: a list and a string)
        return True


def _training_log(run_dir: Path) -> str | None:
    """A run's training log (metrics.jsonl), for save() to write again; None: it has none."""
    path = run_dir / TRAINING_LOG
    return path.read_text(encoding="utf-8") if path.is_file() else None


def _run_config(directory: Path) -> Config | None:
    path = directory / "config.yaml"
    return Config.from_yaml(str(path)) if path.is_file() else None


def merge_settings(settings: dict | None, own: dict) -> dict:
    """``RAFTRegressor``'s ``settings`` (recipe sections) under its own parameters (``own``, the same
    shape). A setting a parameter owns is refused: the parameter would win over it without a word."""
    if settings is None:
        return own
    if not isinstance(settings, dict) or any(
        section not in SECTIONS or not isinstance(values, dict | None) for section, values in settings.items()
    ):
        raise RaftlmError(
            f"settings {short(settings)}: map config sections ({', '.join(SECTIONS)}) to settings, e.g. "
            "settings={'training': {'warmup_steps': 0}}"
        )
    merged = {section: dict(values or {}) for section, values in settings.items()}
    if unread := sorted(set(merged.get("data", {})) & FILE_ONLY):
        raise RaftlmError(
            f"settings data.{unread[0]} says how `raftlm train` reads a dataset or file; fit reads the rows "
            "you pass (X, y): drop it"
        )
    for section, values in own.items():
        if taken := sorted(set(values) & set(merged.get(section, {}))):
            raise RaftlmError(
                f"settings {section}.{taken[0]} is one of RAFTRegressor's own parameters: pass it as that "
                "parameter (e.g. lr=1e-4, prompt_template=..., decoder=...), not in settings"
            )
        merged.setdefault(section, {}).update(values)
    return merged


# data settings of a dataset or file, which fit (given its rows) never reads: refused in settings, not carried
FILE_ONLY = {"dataset", "data_dir", "text_column", "target_column", "history", "stsb_test"}
# a run's settings that a loaded estimator's ``settings`` leave out: the data's (fit takes its rows in
# memory; nor the run's sampling of its training rows: a refit on new rows takes them all unless settings
# say) and how that run reported
NOT_CARRIED = {
    "data": FILE_ONLY | {"template", "train_size", "train_fraction"},
    "training": {"progress_bar", "report_to"},
}


def run_params(directory: Path, predictor) -> dict:
    """``RAFTRegressor`` keyword arguments that reproduce the run in ``directory``: its config.yaml's
    settings, with the grid, template and target scaling the run resolved (``raftlm.json``; a target range
    the settings leave to the data is inferred again by a refit: ``_range_param``)."""
    params = {
        "model": str(directory),
        "method": predictor.method,
        "grid": predictor.grid.spec(),
        "prompt_template": escape(predictor.template),  # as written: fit resolves it (its escapes) again
        "normalize_grid": predictor.normalize_grid,
        "max_length": predictor.max_length,
        "pair_swap": ",".join(predictor.pair) if predictor.pair else None,
        "target_range": _range_of(predictor.scaler),
    }
    cfg = _run_config(directory)
    if cfg is None:
        return params
    m, t = cfg.method, cfg.training
    params.update(
        model=cfg.model.name,
        trainable=cfg.model.trainable,
        decoder=cfg.eval.decoder,
        ce_weight=m.ce_weight,
        ce_target=m.ce_target,
        max_steps=t.max_steps,
        batch_size=t.batch_size,
        lr=t.lr,
        optimizer=t.optimizer,
        eval_steps=t.eval_steps,
        patience=t.patience,
        ema=t.ema,
        bf16=t.bf16,  # (eval.bf16, what `raftlm predict` and the server run it in, is carried in settings
        # where it differs: a recipe may train in bf16 only)
        seed=t.seed,
        val_size=cfg.data.val_size,
    )
    params["settings"] = _other_settings(cfg, RAFTRegressor(**params)._config(None)) or None
    if m.grid is not None and not predictor.extra.get("new_tokens"):
        params["grid"] = m.grid
    params["target_range"] = _range_param(m.target_range, cfg.data.dataset, params["target_range"])
    return params


def _range_param(setting, dataset: str, resolved) -> str | list | None:
    """The ``target_range`` parameter a run's ``method.target_range`` setting stands for. "dataset" (the
    default: the user set none) is the data's own range: for a file's or Python's rows, inferred from the
    rows as `raftlm train --config run/config.yaml` does for a new CSV ("auto", so a refit on other data
    scales to its targets, not to the run's); for a named dataset, the range it declares, which the run
    ``resolved`` (its scaler's)."""
    if setting == "dataset":
        return "auto" if dataset == IN_MEMORY or dataset.startswith(("csv:", "jsonl:")) else resolved
    return None if setting in ("none", None) else setting


def _other_settings(cfg: Config, own: Config) -> dict:
    """The run's settings that ``RAFTRegressor``'s parameters do not carry and that differ from what they
    give (scheduler, warmup, dropout, LoRA rank, a head's options, sampling...): its ``settings``, so that
    ``clone(load(run)).fit`` trains as the run did."""
    owned, given, other = _owned_keys(), own.to_dict(), {}
    for section, values in cfg.to_dict().items():
        skip = NOT_CARRIED.get(section, set())
        if skip is None:  # (the whole section)
            continue
        for key, value in values.items():
            if key not in owned.get(section, set()) | skip and value != given[section].get(key):
                other.setdefault(section, {})[key] = value
    return other


def _owned_keys() -> dict:
    """The settings ``RAFTRegressor``'s own parameters set, per section."""
    return {section: set(values) for section, values in RAFTRegressor()._own(None).items()}


def _range_of(scaler) -> list | None:
    """The target_range setting a resolved scaler stands for: None when it maps data onto the grid as is."""
    same = (scaler.data_low, scaler.data_high) == (scaler.grid_low, scaler.grid_high)
    return None if same else [scaler.data_low, scaler.data_high]


def examples_from(X, y, template: str, names: tuple[str, str] = ("X", "y")) -> list[Example]:
    """``X`` (and ``y``, None when predicting) as Examples, pairing rows by position; each row passes
    the row contract (``rows.render_row``: the same rules as a CSV/JSONL line or a served request).
    ``template`` is resolved (``resolve_template``: a run's, as files and the server fill it; resolving
    it again would read its escapes twice, and ``C:\\temp`` would become a tab). ``names``: what errors
    call X and y (``eval_set X``)."""
    x, yname = names
    rows = text_rows(_rows(X, x), template, lambda i: f"{x}[{i}]")
    targets = [None] * len(rows) if y is None else _targets(y, len(rows), yname)
    fields = [row_fields(template, r, f"{x}[{i}]") for i, r in enumerate(rows)]
    return [Example(render(template, dict(f)), t, f) for f, t in zip(fields, targets, strict=True)]


def _rows(X, name: str = "X") -> list:
    """Rows of ``X``, by position: a DataFrame's records, dicts, or texts (``text_rows`` makes them rows)."""
    if hasattr(X, "columns") and hasattr(X, "to_dict"):  # a pandas DataFrame
        check_columns(X.columns, name)
        return X.to_dict("records")
    if hasattr(X, "tocsr") or hasattr(X, "todense"):  # scipy.sparse: features, not texts
        raise RaftlmError(f"{name} is a sparse matrix, and sparse input is not supported: give texts")
    if isinstance(X, str | bytes | dict) or not hasattr(X, "__iter__"):
        raise RaftlmError(
            f"{name} is {short(X)}: give a sequence of texts (a list, array or Series), a list of dicts or a "
            "DataFrame"
        )
    if getattr(X, "ndim", 1) == 2 and X.shape[1] == 1:  # a column of texts, e.g. df[["review"]].to_numpy()
        X = X[:, 0]
    if getattr(X, "ndim", 1) != 1:
        raise RaftlmError(
            f"{name} has shape {X.shape}: give a 1-D sequence of texts (or one column, shape (n, 1)), a list "
            "of dicts or a DataFrame"
        )
    return list(X)  # a Series iterates its values in order, whatever its index (texts: rows.text_rows)


def _targets(y, n: int, name: str = "y") -> list[float]:
    """``y`` by position (a pandas Series' index is ignored), each a finite number."""
    values = np.asarray(y.to_numpy() if hasattr(y, "to_numpy") else y, dtype=object)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1:
        raise RaftlmError(f"{name} has shape {values.shape}: give one number per row")
    if len(values) != n:
        raise RaftlmError(f"got {n} texts but {len(values)} targets in {name}: pass one target per text")
    return [parse_target(v, f"{name}[{i}]") for i, v in enumerate(values)]
