"""Parameter checks of the lab's estimators, in scikit-learn's ``_parameter_constraints`` style.

An estimator declares ``_parameter_constraints`` (scikit-learn's constraint objects:
:class:`Interval`, :class:`StrOptions`, types, ``None``, ``"boolean"``...) and calls
:func:`validate_params` at the start of ``fit``; a bad value raises the estimator's own
:class:`~deeplesion_lab.errors.LabError` subclass naming the parameter, the allowed values and
the value given. Checks that depend on the data (K against the number of lesions) stay in
``fit`` after it.
"""

from __future__ import annotations

from sklearn.base import BaseEstimator
from sklearn.utils._param_validation import (
    Interval,
    InvalidParameterError,
    StrOptions,
)

from .errors import LabError

__all__ = ["Interval", "StrOptions", "validate_params"]


def validate_params(estimator: BaseEstimator, error: type[LabError]) -> None:
    """Check ``estimator.get_params()`` against its ``_parameter_constraints``.

    Raises
    ------
    LabError
        ``error`` with scikit-learn's message, e.g. "The 'stop_nmi' parameter of
        DeepClusterMiner must be a float in the range [0.0, 1.0]. Got 2 instead."
    """
    try:
        estimator._validate_params()
    except InvalidParameterError as exc:
        raise error(str(exc)) from None
