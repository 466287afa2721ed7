"""`python -m mailgate.cli`."""

from mailgate.cli import main

main()
