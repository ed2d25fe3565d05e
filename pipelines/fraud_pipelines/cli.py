"""Command line of the training pipeline: run it locally, compile it, submit it, benchmark it.

``python -m fraud_pipelines.cli --help``; the ``fraud`` command mounts these.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console

from fraud_pipelines.bench import DEFAULT_GENERATOR, DEFAULT_PROTOCOL, DEFAULT_SEEDS, DEFAULT_TEST_FOLDS
from fraud_pipelines.defaults import check_generator
from fraud_pipelines.params import DEFAULTS, pipeline_arguments
from fraud_pipelines.protocols import check_protocol
from fraudcore.commands import command_group, fail

app = command_group("The fraud model's training pipeline (Kubeflow Pipelines).")
console = Console()
LOCAL_ROOT = Path("local_outputs") / "pipeline"
BENCH_ROOT = Path("local_outputs") / "bench"
PACKAGE_PATH = Path("local_outputs") / "fraud-training.yaml"

SourceOpt = typer.Option(
    DEFAULTS.source, help="archive (MinIO raw events), file (labelled CSV/Parquet) or simulator."
)


def _protocol(value: str) -> str:
    try:
        return check_protocol(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _generator(value: str) -> str:
    try:
        return check_generator(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


_PROTOCOL_HELP = (
    "test rows the headline metrics score: window (every test transaction) or handbook (the Fraud "
    "Detection Handbook's: cards already known compromised left out). Both are reported by name."
)
ProtocolOpt = typer.Option(DEFAULTS.protocol, help=_PROTOCOL_HELP, callback=_protocol)


@app.command()
def train(
    source: str = SourceOpt,
    source_path: str = typer.Option(
        DEFAULTS.source_path, help="file: the CSV/Parquet path (or s3://bucket/key); archive: the prefix."
    ),
    source_options: str = typer.Option(
        "",
        help='JSON: {"mapping": {...} | "handbook"} for a file; simulator options (default: from the flags).',
    ),
    seed: int = typer.Option(0, help="simulator: random seed."),
    customers: int = typer.Option(5_000, help="simulator: customers."),
    terminals: int = typer.Option(10_000, help="simulator: terminals."),
    days: int = typer.Option(183, help="simulator: days of data."),
    start: str = typer.Option("2018-04-01", help="simulator: first day."),
    handbook_scenarios: bool = typer.Option(
        False, help="simulator: fraud scenarios 1-3 only (the Handbook's)."
    ),
    train_start: str = typer.Option(
        DEFAULTS.train_start, help="YYYY-MM-DD; empty: the latest windows the data allows."
    ),
    train_days: int = typer.Option(DEFAULTS.train_days),
    delay_days: int = typer.Option(
        DEFAULTS.delay_days, help="label delay: the gap between training and test."
    ),
    test_days: int = typer.Option(DEFAULTS.test_days),
    history_days: int = typer.Option(
        DEFAULTS.history_days, help="days before the training window for prequential validation."
    ),
    burn_in_days: int = typer.Option(
        DEFAULTS.burn_in_days, help="first days of data never used as examples."
    ),
    candidates: str = typer.Option(DEFAULTS.candidates),
    folds: int = typer.Option(DEFAULTS.folds, help="prequential validation folds."),
    search: str = typer.Option(DEFAULTS.search, help="standard or quick (one setting per candidate)."),
    threshold: float = typer.Option(
        DEFAULTS.threshold, help="decision threshold; < 0: the best-F1 one from validation."
    ),
    protocol: str = ProtocolOpt,
    model_name: str = typer.Option(
        DEFAULTS.model_name, help="prefix in the models bucket and model-events key."
    ),
    version: str = typer.Option(DEFAULTS.version, help="model version; empty: time + hash."),
    upload: bool = typer.Option(DEFAULTS.upload, help="publish to MinIO (champion/challenger, Kafka event)."),
    shadow: bool = typer.Option(
        DEFAULTS.shadow,
        help="publish into the shadow slot even if it beats the champion offline: it scores live "
        "traffic beside the champion until `fraud promote VERSION`.",
    ),
    output_dir: str = typer.Option(str(LOCAL_ROOT), help="kfp's local pipeline root."),
    verbose: bool = typer.Option(False, help="print every step's log."),
) -> None:
    """Run the training pipeline on this machine (kfp local runner, offline)."""
    from fraud_pipelines.local import run_local

    arguments = pipeline_arguments(
        source=source,
        source_path=source_path,
        source_options=source_options,
        seed=seed,
        customers=customers,
        terminals=terminals,
        days=days,
        start=start,
        handbook_scenarios=handbook_scenarios,
        train_start=train_start,
        train_days=train_days,
        delay_days=delay_days,
        test_days=test_days,
        history_days=history_days,
        burn_in_days=burn_in_days,
        candidates=candidates,
        folds=folds,
        search=search,
        threshold=threshold,
        protocol=protocol,
        model_name=model_name,
        version=version,
        shadow=shadow,
        upload=upload,
    )
    needs_store = upload or source == "archive" or source_path.startswith("s3://")
    if needs_store:
        _require_object_store()
    try:
        run_local(arguments, pipeline_root=output_dir, verbose=verbose, console=console)
    except RuntimeError:
        if needs_store:
            _require_object_store()  # the likeliest cause, said plainly if it is the one
        raise typer.Exit(1) from None


def _require_object_store() -> None:
    """Stop with one clear line when the object store, which training reads the archive from
    and publishes its model to, does not answer."""
    from fraudcore.settings import get_settings
    from fraudcore.storage import store_problem

    settings = get_settings()
    if problem := store_problem(settings):
        fail(
            f"training needs the object store: {problem}. Start it (`fraud up` locally) and run "
            "`fraud train` again."
        )


@app.command("compile")
def compile_command(
    output: str = typer.Option(str(PACKAGE_PATH), help="where to write the YAML package."),
    image: str = typer.Option(
        "", help="component image (default: $FRAUD_PIPELINE_IMAGE or the built-in default)."
    ),
    cluster: bool = typer.Option(True, help="include the cluster settings (Secret, environment, resources)."),
    secured_kafka: bool = typer.Option(
        False, help="the production overlays' Kafka: TLS on 9093, SCRAM as KafkaUser fraud-model-publisher."
    ),
) -> None:
    """Compile the pipeline to a kfp YAML package."""
    from fraud_pipelines.pipeline import ClusterConfig, compile

    settings = ClusterConfig.secured_kafka() if secured_kafka else ClusterConfig()
    path = compile(output, image or None, settings if cluster else None)
    console.print(f"wrote {path}")


@app.command()
def submit(
    host: str = typer.Option(..., help="Kubeflow Pipelines API, e.g. http://localhost:8080."),
    image: str = typer.Option(
        "", help="component image (default: $FRAUD_PIPELINE_IMAGE or the built-in default)."
    ),
    pipeline_root: str = typer.Option("s3://models/kfp-root", help="where kfp keeps the artifacts."),
    experiment: str = typer.Option("fraud"),
    namespace: str = typer.Option("", help="Kubeflow profile namespace (multi-user)."),
    arguments: str = typer.Option(
        "{}", help='pipeline parameters as JSON, e.g. {"train_start": "2026-03-01"}.'
    ),
    secured_kafka: bool = typer.Option(
        False, help="the production overlays' Kafka: TLS on 9093, SCRAM as KafkaUser fraud-model-publisher."
    ),
) -> None:
    """Submit a run to a Kubeflow Pipelines cluster."""
    from fraud_pipelines.pipeline import ClusterConfig
    from fraud_pipelines.pipeline import submit as submit_run

    run_id = submit_run(
        host,
        json.loads(arguments),
        image=image or None,
        pipeline_root=pipeline_root,
        experiment=experiment,
        namespace=namespace or None,
        cluster=ClusterConfig.secured_kafka() if secured_kafka else None,
    )
    console.print(f"run {run_id} submitted to {host}")


@app.command()
def bench(
    seeds: str = typer.Option(
        ",".join(map(str, DEFAULT_SEEDS)), help="seeds to run, comma-separated (simulation and training)."
    ),
    protocol: str = typer.Option(DEFAULT_PROTOCOL, help=_PROTOCOL_HELP, callback=_protocol),
    test_folds: int = typer.Option(
        DEFAULT_TEST_FOLDS,
        min=0,
        help="the Handbook's prequential test folds on which the chosen model and the Handbook's "
        "reference model are refit and compared (0: the pipeline's test week only).",
    ),
    generator: str = typer.Option(
        DEFAULT_GENERATOR,
        callback=_generator,
        help="handbook: the Fraud Detection Handbook's own generator (seed 0 is its published data "
        "set); platform: the project's simulator, with the Handbook's population and scenarios.",
    ),
    model_name: str = typer.Option(
        "fraud-bench", help="where the benchmark publishes (never the real champion by default)."
    ),
    upload: bool = typer.Option(True, help="publish to MinIO as the pipeline does."),
    output_dir: str = typer.Option(str(BENCH_ROOT), help="kfp's local pipeline root."),
) -> None:
    """Handbook benchmark: the full pipeline on the Handbook's 183 days of data for each seed; prints one
    JSON object (means over the seeds, their spread, and each seed's run)."""
    from fraud_pipelines.bench import parse_seeds, run_benchmark

    try:
        chosen = parse_seeds(seeds)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--seeds") from None
    result = run_benchmark(
        seeds=chosen,
        protocol=protocol,
        test_folds=test_folds,
        generator=generator,
        model_name=model_name,
        upload=upload,
        pipeline_root=output_dir,
    )
    sys.stdout.write(json.dumps(result) + "\n")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
