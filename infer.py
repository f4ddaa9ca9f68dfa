"""TTA + fold ensemble -> submissions/<name>.csv: `python infer.py --config configs/demo.yaml`."""
import sys

from melanoma.cli import main

if __name__ == "__main__":
    sys.exit(main(["infer"] + sys.argv[1:]))
