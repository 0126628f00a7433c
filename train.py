"""Train an SSD and write a run folder: ``python train.py --data voc:PATH --train-split trainval``.

A thin wrapper over ``dl09 train``; ``python train.py --help`` lists every option.
"""

import sys

from dl09_keras.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
