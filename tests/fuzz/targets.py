"""Every fuzz target by name. Each takes arbitrary bytes and raises only on a broken
property; tests/unit/test_fuzz_parsers.py runs them under hypothesis in CI and
`scripts/fuzz.sh` under atheris for the long run (`python -m tests.fuzz.run NAME`)."""

from __future__ import annotations

from collections.abc import Callable

from tests.fuzz.audit_targets import audit_verify
from tests.fuzz.config_targets import config_bytes, config_structure
from tests.fuzz.http_targets import http1_request, http1_response
from tests.fuzz.policy_targets import (
    allowlist_pattern,
    connect_authority,
    credential_decoders,
    host_normalisation,
)

TARGETS: dict[str, Callable[[bytes], None]] = {
    "http1-request": http1_request,
    "http1-response": http1_response,
    "connect-authority": connect_authority,
    "host-normalisation": host_normalisation,
    "allowlist-pattern": allowlist_pattern,
    "credential-decoders": credential_decoders,
    "config-bytes": config_bytes,
    "config-structure": config_structure,
    "audit-verify": audit_verify,
}
