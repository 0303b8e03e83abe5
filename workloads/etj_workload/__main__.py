"""Command line: ``python -m etj_workload train --model digits-cnn --epochs 4`` (or under torchrun)."""

from __future__ import annotations

import argparse
import logging
import sys

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m etj_workload", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train an example model under the harness")
    train.add_argument("--model", default="digits-mlp", choices=("digits-mlp", "digits-cnn", "synthetic-mlp"))
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--batch-size", type=int, default=32, help="per rank")
    train.add_argument("--lr", type=float, default=2e-3)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--width", type=int, default=1024, help="synthetic-mlp hidden width")
    train.add_argument("--depth", type=int, default=4, help="synthetic-mlp hidden layers")
    train.add_argument("--samples", type=int, default=4096, help="synthetic-mlp dataset size")
    train.add_argument("--result-file", help="rank 0 writes the final status here as JSON")
    train.add_argument("--stop-after-steps", type=int, help="checkpoint and stop after this many global steps")
    train.add_argument("--log-level", default="INFO")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from etj_workload.trainer import TrainConfig, run

    config = TrainConfig(
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        width=args.width,
        depth=args.depth,
        samples=args.samples,
        result_file=args.result_file,
        stop_after_steps=args.stop_after_steps,
    )
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
