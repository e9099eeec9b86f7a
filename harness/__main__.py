"""`python -m harness selector=NAME budget=0.15 ...`"""

from harness.cli import main

if __name__ == "__main__":
    main()
