"""``python -m invkit`` runs the command line."""

from invkit.cli import main

main()
