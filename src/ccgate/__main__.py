"""Allow `python -m ccgate`."""

from ccgate.cli import main

main()
