"""``torchrun`` entry for the distributed training tests: ``_torchrun_train.py PARAMS_JSON METHOD OUT_DIR [--sgd]``."""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's ace_lora, not an installed one

from ace_lora import train as T  # noqa: E402
from ace_lora.config import Params, build  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("params")
    ap.add_argument("method")
    ap.add_argument("out_dir")
    ap.add_argument("--stop-after", type=int, default=None)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--sgd", action="store_true", help="plain SGD instead of AdamW (train_fakes.use_sgd)")
    args = ap.parse_args()
    if args.sgd:
        import train_fakes

        train_fakes.use_sgd()
    params = build(Params, json.loads(Path(args.params).read_text()))
    T.train(params, args.method, Path(args.out_dir), resume=args.resume, stop_after=args.stop_after)


if __name__ == "__main__":
    main()
