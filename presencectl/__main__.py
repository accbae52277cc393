"""`python -m presencectl`: the same entry point as the console script."""

from presencectl.cli.app import main

if __name__ == "__main__":
    main()
