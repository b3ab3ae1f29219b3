"""``python -m splitsim audit``: does a supplied model release more about a sensitive attribute
than an honest one would? (issue 27; run.py explains the method)."""

from splitsim.audit.data import AuditData
from splitsim.audit.model import load_model, released
from splitsim.audit.run import audit, sentence, verdict

__all__ = ["AuditData", "audit", "load_model", "released", "sentence", "verdict"]
