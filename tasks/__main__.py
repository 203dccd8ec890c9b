"""`python -m tasks …` is the `dispatch` command (used to start local workers)."""
from tasks.cli import main

main()
