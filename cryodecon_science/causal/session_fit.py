"""A session's micrographs fitted as a sequence: each with the session prior of those before it, then the
first ones again with the prior of all the others.

The sequence (:func:`fit_session`), for micrographs in arrival order:

1. micrograph i is fitted with the prior of ``prior_before`` (earlier batches) and micrographs 1 … i − 1
   (:func:`~.session_prior.update_session_prior` after each fit, with its own measurements only);
2. the micrographs fitted while the prior held fewer than :data:`~.session_prior.MIN_PRIOR_MICROGRAPHS`
   micrographs had nothing to pool with, so which exposures came first would decide how well they are
   measured: they are fitted again with the prior of all the others (:func:`~.session_prior.leave_one_out_priors`;
   exchangeability, Gelman et al., *Bayesian Data Analysis*, 3rd ed., §5.2).  Where a refit fails, the first
   fit stands: it is a fit of the micrograph on its own.

What one fit is (the image, its CTF fit, optics, dose, drift, device, iteration limit) is the caller's:
``fit(name, session_prior)``, typically a closure over :func:`~.loop.fit_priors`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from cryodecon_science.causal.graph import CausalPriors
from cryodecon_science.causal.session_prior import (
    MIN_PRIOR_MICROGRAPHS,
    SessionPrior,
    leave_one_out_priors,
    update_session_prior,
)

FitWithPrior = Callable[[str, SessionPrior | None], CausalPriors]
"""(micrograph name, session prior or None) → that micrograph's causal priors."""

REFIT_RECOVERABLE_ERRORS: tuple[type[Exception], ...] = (ValueError, FloatingPointError, np.linalg.LinAlgError)
"""What a refit may raise on a micrograph's own data and leave its first fit standing."""


@dataclass(frozen=True)
class SessionFit:
    """The outcome of :func:`fit_session`.

    Attributes
    ----------
    priors : Mapping[str, CausalPriors | Exception]
        Every micrograph in arrival order: its final fit (the refit where one replaced the first fit), or
        the exception its first fit (or the prior update with its measurements) raised.
    seconds : Mapping[str, float]
        Wall time of each successful first fit, prior update included, s (the cost model's step time).
    refitted : tuple of str
        Micrographs refitted with the prior of all the others, in arrival order.
    refit_errors : Mapping[str, Exception]
        Micrographs whose refit raised a recoverable error: their first fit stands.
    """

    priors: Mapping[str, CausalPriors | Exception]
    seconds: Mapping[str, float]
    refitted: tuple[str, ...]
    refit_errors: Mapping[str, Exception]

    def fitted(self) -> dict[str, CausalPriors]:
        """The micrographs that were fitted, in arrival order."""
        return {name: p for name, p in self.priors.items() if not isinstance(p, Exception)}


def fit_session(
    names: Sequence[str],
    fit: FitWithPrior,
    prior_before: SessionPrior | None = None,
    recoverable: tuple[type[Exception], ...] = REFIT_RECOVERABLE_ERRORS,
) -> SessionFit:
    """Fit a session's micrographs in arrival order, pooling each with those before it, then refit the first.

    Parameters
    ----------
    names : sequence of str
        The micrographs in arrival order.
    fit : FitWithPrior
        Fits one micrograph with a session prior (module docstring).
    prior_before : SessionPrior or None
        The session prior of the earlier batches (None: the session starts here).
    recoverable : tuple of exception types
        What a refit may raise and leave the first fit standing (recorded in ``refit_errors``); any other
        exception of a refit propagates.

    Returns
    -------
    SessionFit
        A first fit's exception, of any type, is returned in ``priors`` instead of raised, so one
        micrograph's failure does not stop the session's others; the caller decides (quarantine, raise).
    """
    prior = prior_before
    outcomes: dict[str, CausalPriors | Exception] = {}
    seconds: dict[str, float] = {}
    early: list[str] = []  # fitted before the session had MIN_PRIOR_MICROGRAPHS micrographs to pool with
    for name in names:
        if prior is None or prior.n_micrographs < MIN_PRIOR_MICROGRAPHS:
            early.append(name)
        started = time.perf_counter()
        try:
            fitted = fit(name, prior)
            prior = update_session_prior(prior, fitted.session_measurements())
        except Exception as exc:  # one micrograph's failure, returned: module docstring
            outcomes[name] = exc
            continue
        seconds[name] = time.perf_counter() - started
        outcomes[name] = fitted
    measured = [(name, p.session_measurements()) for name, p in outcomes.items() if not isinstance(p, Exception)]
    fitted_names = {name for name, _ in measured}
    refits = leave_one_out_priors(measured, [n for n in early if n in fitted_names], prior_before)
    refitted: list[str] = []
    refit_errors: dict[str, Exception] = {}
    for name, loo_prior in refits.items():
        try:
            outcomes[name] = fit(name, loo_prior)
            refitted.append(name)
        except recoverable as exc:
            refit_errors[name] = exc
    return SessionFit(outcomes, seconds, tuple(refitted), refit_errors)
