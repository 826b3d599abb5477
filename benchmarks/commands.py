"""What each ``dino-bench`` sub-command runs: its config from the parsed options, then its
benchmark; each returns the result and how to plot it (``WRITTEN``: the benchmark wrote its
own files). The parser and the entry point are ``cli.py``'s."""
from __future__ import annotations

import argparse
import dataclasses

import torch

from .harness.timing import BenchmarkResult, PlotSpec, describe_machine, write_results

WRITTEN = PlotSpec(x="", panels=())  # marks a result whose sub-benchmark wrote its own files
QUICK_CONVERT_IMAGES = 256


def _overrides(args: argparse.Namespace, names: dict[str, str]) -> dict:
    """Config fields explicitly given on the command line (``names``: arg -> field)."""
    out = {}
    for arg, fld in names.items():
        value = getattr(args, arg, None)
        if value is not None:
            out[fld] = tuple(value) if isinstance(value, list) else value
    return out


def _backend_data(pairs: list[str] | None) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"dino-bench: --backend-data expects BACKEND=PATH, got {pair!r}")
        out[name] = path
    return out


def cmd_patch(args, device, argv) -> tuple[BenchmarkResult, PlotSpec]:
    from .model.patch import PATCH_PLOT, PatchBenchConfig, run_patch_benchmark

    base = PatchBenchConfig.quick() if args.quick else PatchBenchConfig()
    fields = _overrides(args, {"archs": "archs", "patches": "patches", "batch": "train_batch",
                               "infer_batch": "infer_batch", "iters": "iters",
                               "warmup": "warmup", "out_dim": "out_dim",
                               "precision": "precision", "seconds": "seconds"})
    cfg = dataclasses.replace(base, **fields, train=not args.no_train)
    return run_patch_benchmark(cfg, device, argv), PATCH_PLOT


def _data_choice(args, quick_images: int | None = None):
    """--data / --corpus / --corpus-dir / --corpus-images / --backend-data as a DataChoice
    (options a sub-command lacks keep DataChoice's defaults); ``quick_images``: the corpus
    size under --quick (default: the pipeline benchmark's)."""
    from .harness.bench_data import DataChoice
    from .data.pipeline import QUICK_CORPUS_IMAGES

    quick = quick_images or QUICK_CORPUS_IMAGES
    images = args.corpus_images or (quick if args.quick else DataChoice.corpus_images)
    return DataChoice(data=args.data, corpus=getattr(args, "corpus", DataChoice.corpus),
                      corpus_dir=args.corpus_dir, corpus_images=images,
                      backend_data=_backend_data(getattr(args, "backend_data", None)))


def _data_bench_config(cls, args, device, names: dict[str, str]):
    """The config of a data benchmark (pipeline, e2e): ``cls.quick`` with --quick,
    ``cls.gpu`` on a CUDA device, else ``cls``; options given override its fields."""
    from .harness.runs import RunLimits

    fields = _overrides(args, names)
    fields["source"] = _data_choice(args)
    make = cls.quick if args.quick else (cls.gpu if device.type == "cuda" else cls)
    cfg = make(**fields)
    if args.in_process or args.time_budget is not None:
        budget = args.time_budget if args.time_budget is not None else cfg.limits.time_budget
        cfg = dataclasses.replace(cfg, limits=RunLimits(isolate=not args.in_process,
                                                        time_budget=budget))
    return cfg


def _partial_writer(args):
    """Write the results so far after every backend (a run cut short keeps them)."""
    return lambda result: write_results(result, args.output_dir, tensorboard=False)


def cmd_pipeline(args, device, argv) -> tuple[BenchmarkResult, PlotSpec]:
    from .data.pipeline import PIPELINE_PLOT, PipelineBenchConfig, run_pipeline_benchmark

    cfg = _data_bench_config(PipelineBenchConfig, args, device, {
        "backends": "backends", "batch_size": "batch_size", "workers": "num_workers",
        "local_crops": "local_crops", "batches": "batches", "warmup_batches": "warmup_batches",
        "seconds": "seconds", "warmup_seconds": "warmup_seconds"})
    return run_pipeline_benchmark(cfg, device, argv, _partial_writer(args)), PIPELINE_PLOT


def cmd_e2e(args, device, argv) -> tuple[BenchmarkResult, PlotSpec]:
    from .data.e2e import E2E_PLOT, E2EConfig, run_e2e_benchmark

    cfg = _data_bench_config(E2EConfig, args, device, {
        "backends": "backends", "arch": "arch", "patch": "patch", "batch_size": "batch_size",
        "workers": "num_workers", "local_crops": "local_crops", "steps": "steps",
        "warmup_steps": "warmup_steps", "out_dim": "out_dim", "precision": "precision",
        "engine": "engine", "seconds": "seconds", "recipes": "recipes"})
    return run_e2e_benchmark(cfg, device, argv, _partial_writer(args)), E2E_PLOT


def cmd_feed(args, device, argv) -> tuple[BenchmarkResult, PlotSpec]:
    from .data.feed import FEED_PLOT, FeedBenchConfig, run_feed_benchmark

    fields = _overrides(args, {"data": "data", "batch_size": "batch_size",
                               "local_crops": "local_crops", "batches": "batches",
                               "warmup_batches": "warmup_batches", "rounds": "rounds"})
    if args.no_parts:
        fields["parts"] = False
    cfg = FeedBenchConfig.quick(**fields) if args.quick else FeedBenchConfig(**fields)
    return run_feed_benchmark(cfg, device, argv), FEED_PLOT


def cmd_loss(args, device, argv) -> tuple[BenchmarkResult, PlotSpec]:
    from .model.loss import LOSS_PLOT, LossBenchShape, build_result, run_loss_benchmark
    shape = LossBenchShape.resolve(device, args.quick, args.batch, args.out_dim, args.iters,
                                   args.dtype)
    threads = torch.get_num_threads()
    config = dict(batch=shape.batch, views=args.views, out_dim=shape.out_dim,
                  iters=shape.iters, dtype=str(shape.dtype).replace("torch.", ""),
                  threads=str(threads))
    rows = [{"threads": threads, **row} for row in run_loss_benchmark(
        device, shape.batch, args.views, shape.out_dim, shape.iters, shape.dtype)]
    return build_result(rows, device, config, argv), LOSS_PLOT


def cmd_step(args, device, argv) -> tuple[BenchmarkResult, PlotSpec]:
    given = {"quick": args.quick, "iters": args.iters, "batch": args.batch,
             "archs": tuple(args.archs) if args.archs else None, "patch": args.patch,
             "precision": args.precision, "seconds": args.seconds}
    if args.parallel:
        from .model.parallel_step import parse_parallel, run_parallel_step_benchmark
        given["world_size"] = args.world_size
        kwargs = {k: v for k, v in given.items() if v is not None}
        # writes its own files, as step.py does
        return run_parallel_step_benchmark(parse_parallel(args.parallel),
                                           args.activation_checkpointing, device=device,
                                           output_dir=args.output_dir, argv=argv,
                                           **kwargs), WRITTEN
    from .model.step import run_step_benchmark
    given["compile"] = args.compile or None
    given["recipes"] = tuple(args.recipes) if args.recipes else None
    kwargs = {k: v for k, v in given.items() if v is not None}
    # benchmarks/model/step.py writes its own files (it plots MFU against its own ceilings)
    return run_step_benchmark(device=device, output_dir=args.output_dir, argv=argv,
                              **kwargs), WRITTEN


def cmd_photometric(args, device, argv) -> tuple[BenchmarkResult, PlotSpec]:
    from .data.photometric import PHOTOMETRIC_PLOT, PhotometricBenchConfig, run_photometric_benchmark

    fields = _overrides(args, {"images": "images", "local_crops": "local_crops",
                               "dtype": "dtype", "iters": "iters", "warmup": "warmup",
                               "reps": "reps"})
    cfg = (PhotometricBenchConfig.quick(**fields) if args.quick
           else PhotometricBenchConfig(**fields))
    return run_photometric_benchmark(cfg, device, argv), PHOTOMETRIC_PLOT


def cmd_convert(args, device, argv) -> tuple[BenchmarkResult, PlotSpec]:
    from .data.convert import CONVERT_PLOT, ConvertBenchConfig, run_convert_benchmark

    if args.images:
        from .data.convert_scale import SCALE_PLOT, ScaleConfig, run_scale_benchmark
        workers = args.workers[-1] if args.workers else ConvertBenchConfig().workers[-1]
        fields = _overrides(args, {n: n for n in ("max_side", "quality", "scratch")})
        scale = ScaleConfig(images=args.images, base=args.scale_base, workers=workers, **fields)
        return (run_scale_benchmark(_data_choice(args, QUICK_CONVERT_IMAGES), scale,
                                    describe_machine(device, argv)), SCALE_PLOT)
    fields = _overrides(args, {n: n for n in ("workers", "max_side", "quality", "repeats",
                                              "scratch")})
    cfg = ConvertBenchConfig(source=_data_choice(args, QUICK_CONVERT_IMAGES),
                             verify=not args.no_verify,
                             whole_process=not args.in_process_only, **fields)
    return run_convert_benchmark(cfg, describe_machine(device, argv)), CONVERT_PLOT


def cmd_stages(args, device, argv) -> tuple[BenchmarkResult, PlotSpec]:
    from .data.stages import STAGES_PLOT, StagesBenchConfig, run_stages_benchmark

    fields = _overrides(args, {"images": "images", "repeats": "repeats",
                               "local_crops": "local_crops"})
    cfg = StagesBenchConfig(source=_data_choice(args, QUICK_CONVERT_IMAGES), **fields)
    return run_stages_benchmark(cfg, describe_machine(device, argv)), STAGES_PLOT


COMMANDS = {"patch": cmd_patch, "convert": cmd_convert, "pipeline": cmd_pipeline,
            "loss": cmd_loss, "step": cmd_step, "e2e": cmd_e2e, "feed": cmd_feed,
            "photometric": cmd_photometric, "stages": cmd_stages}
