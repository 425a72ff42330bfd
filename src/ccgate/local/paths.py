"""Where ccgate keeps its files: platformdirs by default, every location movable by environment variable."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ccgate import env as env_names

APP_NAME = "ccgate"


@dataclass(frozen=True, slots=True)
class Paths:
    config_file: Path
    data_dir: Path
    state_dir: Path
    runtime_dir: Path

    @property
    def ledger_file(self) -> Path:
        return self.data_dir / "ledger.db"

    @property
    def secrets_file(self) -> Path:
        """Fallback secret store used only where no keyring backend exists (mode 0600)."""
        return self.data_dir / "secrets.json"

    @property
    def token_file(self) -> Path:
        """The per-install local token that the sidecar demands of every request."""
        return self.data_dir / "local-token"

    @property
    def pid_file(self) -> Path:
        return self.runtime_dir / "sidecar.pid"

    @property
    def port_file(self) -> Path:
        return self.runtime_dir / "sidecar.port"

    @property
    def lock_file(self) -> Path:
        return self.runtime_dir / "sidecar.lock"

    @property
    def instance_lock_file(self) -> Path:
        """Locked by the running sidecar for its whole life: the one sure sign that this home's sidecar runs."""
        return self.runtime_dir / "sidecar.instance"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "sidecar.log"

    @property
    def _dirs(self) -> tuple[Path, ...]:
        """The directories ccgate writes into."""
        return (self.config_file.parent, self.data_dir, self.state_dir, self.runtime_dir)

    def check(self) -> Paths:
        """Refuse, in one line, locations that run into a regular file (e.g. CCGATE_HOME naming a file)."""
        from ccgate.errors import ConfigError

        for directory in self._dirs:
            blocker = _file_in_the_way(directory)
            if blocker is not None:
                where = "" if blocker == directory else f" (on the way to {directory})"
                raise ConfigError(
                    f"{blocker} is a file where ccgate needs a directory{where}",
                    hint="point CCGATE_HOME (or CCGATE_CONFIG, CCGATE_DATA_DIR, CCGATE_STATE_DIR) at a directory",
                )
        return self

    def ensure(self) -> Paths:
        for directory in self._dirs:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self


def _file_in_the_way(directory: Path) -> Path | None:
    """The nearest existing ancestor of `directory` (itself included), when it is not a directory."""
    for candidate in (directory, *directory.parents):
        try:
            mode = candidate.stat().st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            return None  # unreadable: whatever opens it later says why
        return None if stat.S_ISDIR(mode) else candidate
    return None


def resolve_paths(environ: dict[str, str] | None = None) -> Paths:
    """CCGATE_HOME puts everything in one directory; CCGATE_CONFIG/DATA_DIR/STATE_DIR move single parts."""
    env = os.environ if environ is None else environ
    home = env.get(env_names.HOME)
    if home:
        base = Path(home).expanduser()
        config_file, data_dir, state_dir, runtime_dir = (
            base / "config.toml",
            base / "data",
            base / "state",
            base / "run",
        )
    else:
        import platformdirs

        dirs = platformdirs.PlatformDirs(APP_NAME, appauthor=False)
        config_file = Path(dirs.user_config_dir) / "config.toml"
        data_dir = Path(dirs.user_data_dir)
        state_dir = Path(dirs.user_state_dir)
        runtime_dir = state_dir / "run"
    if env.get(env_names.CONFIG):
        config_file = Path(env[env_names.CONFIG]).expanduser()
    if env.get(env_names.DATA_DIR):
        data_dir = Path(env[env_names.DATA_DIR]).expanduser()
    if env.get(env_names.STATE_DIR):
        state_dir = Path(env[env_names.STATE_DIR]).expanduser()
        runtime_dir = state_dir / "run"
    return Paths(config_file=config_file, data_dir=data_dir, state_dir=state_dir, runtime_dir=runtime_dir)


def home_id(paths: Paths) -> str:
    """Identifies which ccgate home a sidecar serves, so a sidecar of another home is never reused.

    Here rather than in `sidecar.process`, so a command checking for spilled rows need not import that module.
    """
    import hashlib

    return hashlib.sha256(str(paths.data_dir.resolve()).encode()).hexdigest()[:16]
