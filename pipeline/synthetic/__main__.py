"""`python -m pipeline.synthetic ...` entry point."""
import sys

from .generate import main

if __name__ == "__main__":
    sys.exit(main())
