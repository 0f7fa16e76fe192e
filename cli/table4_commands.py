"""`t2tedge table4`: the grid in one process, on Ray (`--ray`), or merged from measured files (`--merge`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from t2tedge.cli.options import at_least, check_image_folder, comma_list
from t2tedge.errors import UsageError
from t2tedge.fileio import ensure_writable_dir


def cmd_table4(args: argparse.Namespace) -> int:
    from t2tedge.harness.table4 import (
        Grid,
        GridSettings,
        load_table,
        merge,
        write_outputs,
    )
    from t2tedge.harness.table4_grid import SUITES, TABLE4_MODELS
    from t2tedge.targets import DEFAULT_NUM_CALIB, PRECISIONS, targets

    measuring = [flag for flag, value in (("--models", args.models), ("--runtimes", args.runtimes),
                                          ("--precisions", args.precisions), ("--suite", args.suite),
                                          ("--data", args.data), ("--limit", args.limit), ("--runs", args.runs),
                                          ("--num-calib", args.num_calib), ("--threads", args.threads),
                                          ("--artifacts", args.artifacts), ("--ray", args.ray),
                                          ("--weights", args.weights), ("--labels", args.labels),
                                          ("--calib", args.calib))
                 if value is not None]
    if args.merge and measuring:
        raise UsageError(f"--merge joins measured files and measures nothing; drop {', '.join(measuring)}")
    for flag, value in (("--shard-images", args.shard_images), ("--ray-cpus", args.ray_cpus)):
        if value is not None and args.ray is None:
            raise UsageError(f"{flag} goes with --ray; without it the grid runs in this process")
    if args.ray is not None:
        from t2tedge.harness.table4_ray import RayOptions

        ray_options = RayOptions(address=args.ray, shard_images=args.shard_images or RayOptions.shard_images,
                                 cpus=args.ray_cpus)
    if args.merge:
        table = merge([load_table(p) for p in args.merge])
        ensure_writable_dir(args.out)
        from t2tedge.harness.table4_views import versions_note

        note = versions_note(table)
        if note:
            print(f"note: {note}")
    else:
        suite = args.suite or "imagenet"
        if args.weights is not None and suite != "imagenet":
            raise UsageError(f"--weights {args.weights} chooses the imagenet suite's weights; the {suite} suite "
                             f"trains its own")
        if args.labels is not None and not args.labels.is_file():
            raise UsageError(f"--labels {args.labels}: no such file")
        data = args.data or SUITES[suite].data()
        if args.labels is not None and data.is_dir() and any(p.is_dir() for p in data.iterdir()):
            raise UsageError(f"--labels labels a flat ImageNet val folder; {data} holds class folders, whose names "
                             f"are the labels")
        check_image_folder(args.calib, "--calib", "calibration folder not found")
        settings = GridSettings(data=args.data or SUITES[suite].data(), limit=args.limit, threads=args.threads,
                                runs=args.runs or 50, num_calib=args.num_calib or DEFAULT_NUM_CALIB, suite=suite,
                                weights=args.weights or "local", labels=args.labels, calib=args.calib)
        ensure_writable_dir(args.out)
        if args.artifacts is not None:
            ensure_writable_dir(args.artifacts, "--artifacts")
        grid = Grid(comma_list(args.models or ",".join(TABLE4_MODELS)), comma_list(args.runtimes or ",".join(targets())),
                    comma_list(args.precisions or ",".join(PRECISIONS)), settings, args.out, args.artifacts)
        if args.ray is None:
            table = grid.run()
        else:
            from t2tedge.harness.table4_ray import RayGrid

            table = RayGrid(grid, ray_options).run()
    paths = write_outputs(table, args.out)
    measured = sum(c.measured for c in table.cells)
    failed = sum(c.status == "failed" for c in table.cells)
    print(f"{measured} cells measured, {len(table.cells) - measured - failed} skipped"
          + (f", {failed} failed" if failed else "") + "; wrote " + ", ".join(str(p) for p in paths.values()))
    return 1 if failed else 0


def table4_parser(sub) -> None:
    from t2tedge.harness.table4_grid import SUITES, TABLE4_MODELS, WEIGHT_SOURCES
    from t2tedge.targets import DEFAULT_NUM_CALIB, PRECISIONS, targets

    p = sub.add_parser("table4", help="the paper's Table 4 grid, measured: models x targets x precisions",
                       description="Every cell builds its file with the target's build function and the defaults of "
                                   "`t2tedge export` (static batch 1), then measures that file: accuracy, size, "
                                   "batch-1 latency. Files and finished cells are cached under --out.")
    p.add_argument("--models", help=f"comma list (default: {','.join(TABLE4_MODELS)})")
    p.add_argument("--runtimes", help=f"comma list of targets (default: {','.join(targets())})")
    p.add_argument("--precisions", help=f"comma list (default: {','.join(PRECISIONS)})")
    p.add_argument("--suite", choices=sorted(SUITES),
                   help="imagenet: ImageNet weights where they exist (untrained T2T-ViT otherwise), val1300, "
                        "imagenet-sample calibration; imagenette: every model trained from scratch on Imagenette, "
                        "its val, calibrated on its train; models without such weights are skipped "
                        "(default: imagenet)")
    p.add_argument("--data", type=Path, help="evaluation images: class folders, or a flat ImageNet val folder "
                                              "(ILSVRC2012_val_*.JPEG; its labels from --labels) (default: the "
                                              "suite's)")
    p.add_argument("--labels", type=Path, metavar="FILE",
                   help="ground truth of a flat ImageNet val folder: lines 'ILSVRC2012_val_00000001.JPEG INDEX' "
                        "(the devkit's, as caffe's val.txt writes it) (default: ../shared's copy)")
    p.add_argument("--weights", choices=WEIGHT_SOURCES,
                   help="imagenet suite: local = the weights found here (../shared, releases fetched before), "
                        "untrained otherwise; official = every model's MODEL.official release, downloaded once "
                        "(default: local)")
    p.add_argument("--limit", type=at_least(1), help="N images evenly spread over the classes, for quick runs")
    p.add_argument("--runs", type=at_least(1), help="timed batch-1 runs per cell after warm-up (default: 50)")
    p.add_argument("--calib", type=Path, metavar="DIR",
                   help="calibration images of the int8 cells, any folder of photos, never the evaluated ones "
                        "(default: the suite's: ../shared imagenet-sample or imagenette2/train)")
    p.add_argument("--num-calib", type=at_least(1),
                   help=f"calibration images for the int8 cells, from the suite's calibration folder (default: "
                        f"{DEFAULT_NUM_CALIB})")
    p.add_argument("--threads", type=at_least(1))
    p.add_argument("--out", type=Path, default=Path("results"), help="output folder (default: %(default)s)")
    p.add_argument("--artifacts", type=Path, metavar="DIR",
                   help="where the cells' files are built and cached (default: OUT/artifacts); with --ray ADDRESS, "
                        "a folder every node reads and writes at the same path")
    p.add_argument("--ray", metavar="auto|ADDRESS",
                   help="run the grid on Ray (the cluster extra): 'auto' starts a local instance, ADDRESS joins a "
                        "running cluster (e.g. 10.0.0.5:6379). One task per artifact build, accuracy in shards of "
                        "images, each timing holding a whole node; see docs/cluster.md")
    p.add_argument("--shard-images", type=at_least(1), metavar="N",
                   help="images per accuracy task with --ray (rounded up to a multiple of 32; default: 256)")
    p.add_argument("--ray-cpus", type=at_least(1), metavar="N",
                   help="CPUs of the local instance of --ray auto (default: all of this machine's)")
    p.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                   help="merge table4.json files and `t2tedge profile` records instead of measuring")
    p.set_defaults(func=cmd_table4)
