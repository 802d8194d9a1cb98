"""Configuration: the model, loading and validation, and trust of project files."""

from __future__ import annotations

from claude_bottle.config.load import CONFIG_ENV, PROJECT_FILE, load_config, print_to_stderr
from claude_bottle.config.model import (
    EGRESS_MODES,
    BottleSection,
    Config,
    CredentialsConfig,
    DlpConfig,
    DlpPattern,
    EgressConfig,
    GitRemote,
    ResolvePin,
)
from claude_bottle.config.trust import TrustStatus, TrustStore

__all__ = [
    "CONFIG_ENV",
    "EGRESS_MODES",
    "PROJECT_FILE",
    "BottleSection",
    "Config",
    "CredentialsConfig",
    "DlpConfig",
    "DlpPattern",
    "EgressConfig",
    "GitRemote",
    "ResolvePin",
    "TrustStatus",
    "TrustStore",
    "load_config",
    "print_to_stderr",
]
