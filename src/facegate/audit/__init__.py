"""The tamper-evident audit log: append-only entries in an RFC 6962 Merkle tree, signed checkpoints, proofs,
and a verifier that needs only an export and the public key."""

from facegate.audit.base import AuditUnavailable, BaseAuditLog
from facegate.audit.log import AuditLog
from facegate.audit.verify import VerificationReport, verify_export

__all__ = ["AuditLog", "AuditUnavailable", "BaseAuditLog", "VerificationReport", "verify_export"]
