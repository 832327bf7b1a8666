"""``python -m grantkeeper``: the same CLI as the ``grantkeeper`` script."""

from grantkeeper._cli import main

main()
