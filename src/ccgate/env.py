"""Every `CCGATE_*` environment variable ccgate reads or sets, in one place (the README's table lists them too).

Standard library only and nothing at import time: the status line's fast path imports this module.
"""

from __future__ import annotations

# --- where ccgate keeps its files ---------------------------------------------------------------------------------
HOME = "CCGATE_HOME"  # one directory for config, data and state (instead of the platformdirs locations)
CONFIG = "CCGATE_CONFIG"  # the config.toml file itself
DATA_DIR = "CCGATE_DATA_DIR"  # the data directory (ledger, secrets file, local token)
STATE_DIR = "CCGATE_STATE_DIR"  # the state directory (logs, launches, run files)

# --- the sidecar ----------------------------------------------------------------------------------------------------
SIDECAR_PORT = "CCGATE_SIDECAR_PORT"  # the sidecar's port, over `sidecar.port` (0 = any free port)
LOG_LEVEL = "CCGATE_LOG_LEVEL"  # the sidecar's log level (default INFO)
LAUNCH_ID = "CCGATE_LAUNCH_ID"  # set by `ccgate launch` for the child: the id this launch registered

# --- launches ---------------------------------------------------------------------------------------------------
TAGS = "CCGATE_TAGS"  # "k=v,..." tags for every row of a launch (`launch --tag` wins for the same key)

# --- the org gateway ------------------------------------------------------------------------------------------------
GATEWAY_URL = "CCGATE_GATEWAY_URL"  # the gateway `ccgate gateway admin|report` talk to (instead of --url)
# the first admin's token (serve) / the token admin commands send
GATEWAY_ADMIN_TOKEN = "CCGATE_GATEWAY_ADMIN_TOKEN"  # noqa: S105 - a variable name
# Fernet key material that encrypts stored provider keys
GATEWAY_SECRET_KEY = "CCGATE_GATEWAY_SECRET_KEY"  # noqa: S105 - a variable name

# --- org mode (a developer logged in to a gateway) -------------------------------------------------------------
SYNC_INTERVAL_SECONDS = "CCGATE_SYNC_INTERVAL_SECONDS"  # how often the sidecar syncs usage to the gateway (10)
SYNC_BATCH_ROWS = "CCGATE_SYNC_BATCH_ROWS"  # rows per sync batch (500)

# --- Claude Code's files --------------------------------------------------------------------------------------------
CLAUDE_MANAGED_SETTINGS = "CCGATE_CLAUDE_MANAGED_SETTINGS"  # managed-settings.json paths (os.pathsep-separated)

# --- read by the test suite and CI only ---------------------------------------------------------------------------
REQUIRE_E2E = "CCGATE_REQUIRE_E2E"  # "1": the end-to-end tests fail instead of skipping without Claude Code
TEST_REAL_KEYRING = "CCGATE_TEST_REAL_KEYRING"  # "1": run the test that uses the OS keyring
TEST_ARTIFACTS = "CCGATE_TEST_ARTIFACTS"  # where browser tests keep their screenshots (default test-artifacts/)


# --- per provider -------------------------------------------------------------------------------------------------
def provider_part(name: str) -> str:
    """How a provider's name appears in its variables: `my-llm` -> `MY_LLM`."""
    return name.upper().replace("-", "_")


def provider_base_url(name: str) -> str:
    """`anthropic` -> `CCGATE_ANTHROPIC_BASE_URL`: where that provider points (wins over config.toml)."""
    return f"CCGATE_{provider_part(name)}_BASE_URL"


def provider_api_key(name: str) -> str:
    """`groq` -> `CCGATE_GROQ_API_KEY`: that provider's key (wins over the keyring)."""
    return f"CCGATE_{provider_part(name)}_API_KEY"
