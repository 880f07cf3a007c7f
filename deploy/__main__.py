"""``python -m effdeploy`` == the ``effdeploy`` console script."""

from .commands import main

main()
