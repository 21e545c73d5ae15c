"""Virtual keys, rate limits and budgets in front of the routes (see `Tenants`)."""

from inferline.tenants.policy import KeyPolicy
from inferline.tenants.service import Admission, Estimate, Identity, Tenants

__all__ = ["Admission", "Estimate", "Identity", "KeyPolicy", "Tenants"]
