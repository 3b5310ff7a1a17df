"""`python -m ideaforge.rl ENV --ideator MODEL ...`: the `ideaforge rl` command on its own."""

from ideaforge.rl.command import main

if __name__ == "__main__":
    main()
