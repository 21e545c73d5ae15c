"""Checks in the request path: a route's checks score the question and the answer (and its
tool calls) and decide to allow, abstain, hold for human review, or block
(`GuardedGenerator`); `ReviewDesk` keeps the review cases."""

from inferline.guard.config import GuardCheck, GuardPolicy
from inferline.guard.desk import ReviewClosedError, ReviewDesk
from inferline.guard.evaluate import Classify
from inferline.guard.generator import GuardedGenerator

__all__ = [
    "Classify",
    "GuardCheck",
    "GuardPolicy",
    "GuardedGenerator",
    "ReviewClosedError",
    "ReviewDesk",
]
