"""Secrets from where the config says they are: a file (relative to the
config's directory) or an environment variable, never the config itself.
The one reader every part uses; errors name the config key and the source,
never the value."""
from __future__ import annotations

import os
from pathlib import Path


class SecretError(ValueError):
    """A configured secret cannot be read, or is too short."""


def read_secret(*, file: str | None, env: str | None, base_dir: str | Path, what: str,
                min_length: int = 1) -> str | None:
    """The secret in ``file`` or in the environment variable ``env`` (the
    file wins when both are given); None when neither is configured.
    ``what`` names the config key in errors."""
    if file is not None:
        path = Path(file)
        path = path if path.is_absolute() else Path(base_dir) / path
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise SecretError(f"{what}.file: {path}: {e.strerror or e}") from None
        source = f"{what}.file: {path}"
    elif env is not None:
        value = os.environ.get(env, "").strip()
        if not value:
            raise SecretError(f"{what}: environment variable {env} is not set")
        source = f"{what}.env: {env}"
    else:
        return None
    if not value:
        raise SecretError(f"{source}: empty")
    if len(value) < min_length:
        raise SecretError(f"{source}: secret shorter than {min_length} characters")
    return value
