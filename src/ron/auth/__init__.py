"""ron.auth: node identity, capability tokens, rotation, revocation and the audit log.

docs/specs/CAPABILITIES.md is the contract. Enforcement points need two names::

    verifier = Verifier.from_data_dir(config.data_dir, overlap_s=config.caps.rotation_overlap_s)
    grant = verifier.check(bearer_token(auth_header), method="PUT", path="/put",
                           audience=node_id, nbytes=length)   # RonError 401 / 403
    tenant = grant.tenant
"""

from ron.auth.audit import AuditLog, AuditRecord, AuditReport
from ron.auth.audit import verify as verify_audit_log
from ron.auth.authority import Authority, token_caveats
from ron.auth.caveats import Caveat, caveat, parse_caveat_text
from ron.auth.files import AuthPaths
from ron.auth.identity import NodeIdentity, node_id_of
from ron.auth.keys import KeyRing, RootKey
from ron.auth.revocation import RevocationEntry, RevocationList
from ron.auth.token import Token, mint_token
from ron.auth.verifier import Grant, Verifier, bearer_token

__all__ = [
    "AuditLog",
    "AuditRecord",
    "AuditReport",
    "AuthPaths",
    "Authority",
    "Caveat",
    "Grant",
    "KeyRing",
    "NodeIdentity",
    "RevocationEntry",
    "RevocationList",
    "RootKey",
    "Token",
    "Verifier",
    "bearer_token",
    "caveat",
    "mint_token",
    "node_id_of",
    "parse_caveat_text",
    "token_caveats",
    "verify_audit_log",
]
