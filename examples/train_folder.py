"""Train a class-conditional diffusion model on a folder of images, one sub-folder per class.

    python examples/train_folder.py --data path/to/folder --out runs/my_folder_run
    python examples/train_folder.py --data path/to/folder --out runs/f --eval-every 500 --metrics fid

The folder is read by versadiff's `image_folder` dataset (class = sub-folder name, images resized to
--resolution); the network is the shapes demo's tiny UNet (preset shapes_unet_tiny) with `model.num_classes:
auto`, so the number of classes comes from the folder. The run folder gets stats.jsonl, TensorBoard logs
(RUN/tensorboard/), sample grids with the class names, loss.png at every checkpoint and, with --eval-every,
the chosen metrics (fid needs the Inception weights: VERSADIFF_INCEPTION_WEIGHTS) and the best weights in
RUN/best/. Afterwards: `versadiff sample RUN -n 16 -o samples/` or `versadiff.load_model(RUN)`.
"""

from __future__ import annotations

import argparse

from versadiff.config import load_config
from versadiff.train.trainer import Trainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="folder of class sub-folders of images")
    p.add_argument("--out", required=True, help="run folder (new or empty)")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps and at the end (0: never)")
    p.add_argument("--metrics", default="fid", help="metrics of `versadiff eval` (fid, kid, pr, is, clip, ...)")
    p.add_argument("--eval-n", type=int, default=256, help="samples per evaluation")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more config overrides")
    args = p.parse_args()

    overrides = [
        f"data={{name: image_folder, root: '{args.data}', resolution: {args.resolution}}}",
        "model.num_classes=auto",  # the folder's classes
        f"train.max_steps={args.steps}", f"train.batch_size={args.batch_size}",
        f"train.checkpoint_every={max(1, args.steps // 4)}", f"train.sample_every={max(1, args.steps // 4)}",
        f"train.eval_every={args.eval_every}", f"train.eval_metrics={args.metrics}", f"train.eval_n={args.eval_n}",
        *args.set,
    ]
    cfg = load_config("shapes_unet_tiny", overrides)
    run = Trainer(cfg, out=args.out).run()
    print(f"run folder: {run}\nloss curve: {run / 'loss.png'}\nweights:    {run / 'export' / 'model.safetensors'}")


if __name__ == "__main__":
    main()
