"""This machine: paths, the config file, secrets in the keyring, the timezone, Claude Code's files."""
