"""Train one fold (or all) of one config: `python train.py --config configs/demo.yaml --fold 0`."""
import sys

from melanoma.cli import main

if __name__ == "__main__":
    sys.exit(main(["train"] + sys.argv[1:]))
