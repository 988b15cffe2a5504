"""`serverless package` (Serverless Framework v3, from node_modules) gives a CloudFormation template
that cfn-lint accepts and that keeps the deployment's promises: retrying, bisecting stream mappings
with a failure queue; one least-privilege role per function; encryption at rest everywhere; no
public bucket; a state table with TTL. Where the AWS runtime's code is in the tree, the template is
also checked against it: the roles grant every call it makes, the env vars are the ones it reads.

Runs offline with dummy credentials; needs node/npx (skips without them) and the PyPI wheels that
deploy/build_lambda_package.py installs (pip's cache or the registry).
"""

from __future__ import annotations

import argparse
import ast
import fcntl
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.aws

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
TASK_ROOT = "/var/task/"  # where Lambda unpacks a zip artifact
STAGE, REGION = "ci", "eu-west-1"
ARTIFACT = "sessionflow-lambda.zip"

# No network, no credentials: dummy keys, no telemetry (sent on errors), no notifications.
OFFLINE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_REGION": REGION,
    "AWS_DEFAULT_REGION": REGION,
    "SLS_TELEMETRY_DISABLED": "1",
    "SLS_NOTIFICATIONS_MODE": "off",
    "SLS_DEPRECATION_DISABLE": "*",
}

# The runtime contract: the env vars each function must be given.
_SHARD_CLOSER_ENV = {
    "SESSIONFLOW_CLEAN_STREAM",
    "SESSIONFLOW_STATE_TABLE",
    "SESSIONFLOW_STATE_TTL",
    "SESSIONFLOW_EVENTS_FIREHOSE",
    "SESSIONFLOW_SESSIONS_FIREHOSE",
    "SESSIONFLOW_REJECTED_FIREHOSE",  # a recovery re-sends an outbox's conflicting copies' rejections
    "SESSIONFLOW_CONFIG",
}
FUNCTION_ENV = {
    "process": {"SESSIONFLOW_CLEAN_STREAM", "SESSIONFLOW_REJECTED_FIREHOSE", "SESSIONFLOW_CONFIG"},
    "sessionize": {
        "SESSIONFLOW_STATE_TABLE",
        "SESSIONFLOW_STATE_TTL",
        "SESSIONFLOW_EVENTS_FIREHOSE",
        "SESSIONFLOW_SESSIONS_FIREHOSE",
        "SESSIONFLOW_REJECTED_FIREHOSE",  # conflicting copies: conflicting_duplicate rejections
        "SESSIONFLOW_CONFIG",
    },
    # Invoked by hand at the end of a replay: lists the clean shards, then closes their sessions.
    "flush": _SHARD_CLOSER_ENV,
    # On a schedule: lists the clean shards, closes the idle sessions of the quiet ones.
    "sweep": _SHARD_CLOSER_ENV,
}
# What each function must be allowed to do with the resource each env var names.
_STATE = (
    "dynamodb:BatchGetItem",
    "dynamodb:BatchWriteItem",
    "dynamodb:PutItem",
    "dynamodb:DeleteItem",
    "dynamodb:UpdateItem",
)
_DELIVER = ("firehose:PutRecordBatch",)
_SHARD_CLOSER_GRANTS = {
    "SESSIONFLOW_CLEAN_STREAM": ("kinesis:ListShards",),
    "SESSIONFLOW_STATE_TABLE": _STATE,
    "SESSIONFLOW_EVENTS_FIREHOSE": _DELIVER,
    "SESSIONFLOW_SESSIONS_FIREHOSE": _DELIVER,
    "SESSIONFLOW_REJECTED_FIREHOSE": _DELIVER,
}
FUNCTION_GRANTS: dict[str, dict[str, tuple[str, ...]]] = {
    "process": {"SESSIONFLOW_CLEAN_STREAM": ("kinesis:PutRecords",), "SESSIONFLOW_REJECTED_FIREHOSE": _DELIVER},
    "sessionize": {
        "SESSIONFLOW_STATE_TABLE": _STATE,
        "SESSIONFLOW_EVENTS_FIREHOSE": _DELIVER,
        "SESSIONFLOW_SESSIONS_FIREHOSE": _DELIVER,
        "SESSIONFLOW_REJECTED_FIREHOSE": _DELIVER,
    },
    "flush": _SHARD_CLOSER_GRANTS,
    "sweep": _SHARD_CLOSER_GRANTS,
}
STREAM_FUNCTIONS = ("ProcessLambdaFunction", "SessionizeLambdaFunction")
KINESIS_READ = ("GetRecords", "GetShardIterator", "DescribeStream", "DescribeStreamSummary", "ListShards")

Template = dict[str, Any]


# ------------------------------------------------------------------------------------------ fixtures


@contextmanager
def exclusive(lock: Path) -> Iterator[None]:
    """One pytest-xdist worker at a time (they share the repo's node_modules and the run's temp dir)."""
    with lock.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def serverless_command() -> list[str]:
    if shutil.which("node") is None or shutil.which("npx") is None:
        pytest.skip("node/npx not found: the Serverless Framework runs on Node.js (apt-get install nodejs npm)")
    with exclusive(Path(tempfile.gettempdir()) / "sessionflow-npm-ci.lock"):
        if not (ROOT / "node_modules" / "serverless" / "package.json").is_file():
            # The same step as `make deploy-deps`: serverless@3 exactly as package-lock.json pins it.
            command = ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--prefer-offline"]
            subprocess.run(command, cwd=ROOT, check=True, timeout=600)
    return ["npx", "--no", "--", "serverless"]  # --no: never fetch a serverless (v4) from the registry


def run_package(artifact: Path, out: Path, stage: str) -> None:
    # The build writes the lake's Glue catalog (catalog.json) beside the artifact.
    env = {
        **os.environ,
        **OFFLINE_ENV,
        "SESSIONFLOW_LAMBDA_ARTIFACT": str(artifact),
        "SESSIONFLOW_LAKE_CATALOG": str(artifact.with_name("catalog.json")),
    }
    env.pop("AWS_PROFILE", None)
    command = [*serverless_command(), "package", "--stage", stage, "--region", REGION, "--package", str(out)]
    result = subprocess.run(command, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"serverless package failed:\n{result.stdout}\n{result.stderr}"


def built_once(factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """``build(dir)`` once per test run, even when pytest-xdist spreads this module over workers."""
    base = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's directory, shared by its workers
    target = base / f"deploy-{name}"
    with exclusive(base / f"deploy-{name}.lock"):
        if not (target / ".done").exists():
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir()
            build(target)
            (target / ".done").touch()
    return target


def build_artifact(directory: Path) -> None:
    command = [sys.executable, str(ROOT / "deploy" / "build_lambda_package.py"), "--out", str(directory / ARTIFACT)]
    subprocess.run(command, cwd=ROOT, check=True, timeout=300)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built_once(tmp_path_factory, "lambda", build_artifact) / ARTIFACT


@pytest.fixture(scope="module")
def packaged(artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built_once(tmp_path_factory, "serverless", lambda out: run_package(artifact, out, STAGE))


@pytest.fixture(scope="module")
def template(packaged: Path) -> Template:
    loaded: Template = json.loads((packaged / "cloudformation-template-update-stack.json").read_text())
    return loaded


# ------------------------------------------------------------------------------------------ helpers


def of_type(template: Template, kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == kind}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def getatt(resource: str, attribute: str = "Arn") -> dict[str, list[str]]:
    return {"Fn::GetAtt": [resource, attribute]}


def statements(role: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for policy in role["Properties"].get("Policies", []):
        yield from policy["PolicyDocument"]["Statement"]


def allows(role: dict[str, Any], action: str, resource: Any) -> bool:
    return any(
        statement["Effect"] == "Allow"
        and action in as_list(statement["Action"])
        and resource in as_list(statement["Resource"])
        for statement in statements(role)
    )


def functions(template: Template) -> dict[str, dict[str, Any]]:
    """Short function name (``process``) -> its AWS::Lambda::Function resource."""
    return {
        name.removesuffix("LambdaFunction").lower(): r for name, r in of_type(template, "AWS::Lambda::Function").items()
    }


def role_of(template: Template, function: dict[str, Any]) -> dict[str, Any]:
    role_ref = function["Properties"]["Role"]
    assert "Fn::GetAtt" in role_ref, f"the role must be one of this stack's: {role_ref}"
    role: dict[str, Any] = template["Resources"][role_ref["Fn::GetAtt"][0]]
    return role


def mapping_of(template: Template, function_logical_id: str) -> dict[str, Any]:
    mappings: list[dict[str, Any]] = [
        m["Properties"]
        for m in of_type(template, "AWS::Lambda::EventSourceMapping").values()
        if m["Properties"]["FunctionName"] == getatt(function_logical_id)
    ]
    assert len(mappings) == 1, f"{function_logical_id}: expected one stream mapping, found {len(mappings)}"
    return mappings[0]


def runtime_source(relative: str) -> Path:
    path = SRC / "sessionflow" / relative
    if not path.is_file():
        pytest.skip(f"src/sessionflow/{relative} is not in this tree (the AWS runtime, branch aws, not merged)")
    return path


# ------------------------------------------------------------------------------------------ the template


def test_cfn_lint_reports_no_errors(packaged: Path) -> None:
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    templates = sorted(packaged.glob("cloudformation-template-*.json"))
    assert [t.name for t in templates] == [
        "cloudformation-template-create-stack.json",
        "cloudformation-template-update-stack.json",
    ]
    command = [str(cfn_lint) if cfn_lint.exists() else "cfn-lint", "--format", "json", "--regions", REGION, "us-east-1"]
    result = subprocess.run(
        [*command, "--", *map(str, templates)], check=False, capture_output=True, text=True, timeout=120
    )
    # Exit code bits: 2 errors, 4 warnings, 8 infos; anything else means cfn-lint itself failed.
    assert result.returncode & ~(2 | 4 | 8) == 0, f"cfn-lint did not run: {result.stderr}"
    matches = json.loads(result.stdout or "[]")
    errors = [
        f"{Path(m['Filename']).name}: {m['Rule']['Id']} {m['Message']} at {m['Location']['Path']}"
        for m in matches
        if m["Level"] == "Error"
    ]
    assert not errors, "\n".join(errors)
    assert result.returncode & 2 == 0, result.stdout


def test_stream_mappings_retry_bisect_and_report_to_a_queue(template: Template) -> None:
    fns = of_type(template, "AWS::Lambda::Function")
    queues = of_type(template, "AWS::SQS::Queue")
    for logical_id in STREAM_FUNCTIONS:
        function = fns[logical_id]
        mapping = mapping_of(template, logical_id)
        assert mapping["BisectBatchOnFunctionError"] is True
        assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
        assert 0 <= mapping["MaximumRetryAttempts"] <= 10_000, "-1 retries a poison record until it expires"
        assert 60 <= mapping["MaximumRecordAgeInSeconds"] <= 604_800
        assert mapping["StartingPosition"] == "TRIM_HORIZON", "LATEST drops what arrived before the mapping"
        assert 1 <= mapping["MaximumBatchingWindowInSeconds"] <= 300
        destination = mapping["DestinationConfig"]["OnFailure"]["Destination"]
        assert destination["Fn::GetAtt"][0] in queues, f"{logical_id}: the failure destination must be an SQS queue"
        role = role_of(template, function)
        assert allows(role, "sqs:SendMessage", destination), f"{logical_id}: the ESM sends failures with its role"
        for action in KINESIS_READ:
            assert allows(role, f"kinesis:{action}", mapping["EventSourceArn"]), f"{logical_id}: kinesis:{action}"


def test_only_the_stream_functions_have_mappings(template: Template) -> None:
    mapped = {
        m["Properties"]["FunctionName"]["Fn::GetAtt"][0]
        for m in of_type(template, "AWS::Lambda::EventSourceMapping").values()
    }
    assert mapped == set(STREAM_FUNCTIONS)


def test_sessionize_runs_one_batch_per_shard_at_a_time(template: Template) -> None:
    # Its per-shard clock item is committed conditionally: concurrent batches of a shard conflict.
    assert mapping_of(template, "SessionizeLambdaFunction").get("ParallelizationFactor", 1) == 1


def test_functions_run_the_artifacts_python(template: Template) -> None:
    for function in of_type(template, "AWS::Lambda::Function").values():
        assert function["Properties"]["Runtime"] == "python3.12"
        assert function["Properties"]["Architectures"] == ["x86_64"]


# Actions without resource-level permissions: "*" is the only resource IAM accepts for them.
UNRESTRICTABLE = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}


def test_each_function_has_its_own_role_with_no_wildcards(template: Template) -> None:
    assert "IamRoleLambdaExecution" not in template["Resources"], "the framework's shared role must not exist"
    roles = [
        function["Properties"]["Role"]["Fn::GetAtt"][0]
        for function in of_type(template, "AWS::Lambda::Function").values()
    ]
    assert len(roles) == len(set(roles)), f"functions share a role: {roles}"
    for name, role in of_type(template, "AWS::IAM::Role").items():
        assert not role["Properties"].get("ManagedPolicyArns"), f"{name}: managed policies grant '*' resources"
        for statement in statements(role):
            for action in as_list(statement["Action"]):
                assert "*" not in action, f"{name}: wildcard action {action}"
            for resource in as_list(statement["Resource"]):
                if set(as_list(statement["Action"])) <= UNRESTRICTABLE:
                    continue
                assert resource != "*", f"{name}: {statement['Action']} on every resource"


def test_function_environment_names_what_its_role_may_use(template: Template) -> None:
    fns = functions(template)
    assert fns.keys() >= FUNCTION_ENV.keys()
    for short_name, required in FUNCTION_ENV.items():
        function = fns[short_name]
        env = function["Properties"]["Environment"]["Variables"]
        assert required <= env.keys(), f"{short_name}: missing {sorted(required - env.keys())}"
        assert env["POWERTOOLS_SERVICE_NAME"] and env["POWERTOOLS_LOG_LEVEL"]
        role = role_of(template, function)
        named = {variable for variable, value in env.items() if isinstance(value, dict)}
        assert named == FUNCTION_GRANTS[short_name].keys(), f"{short_name}: env vars naming resources"
        for variable, actions in FUNCTION_GRANTS[short_name].items():
            target = getatt(env[variable]["Ref"])
            for action in actions:
                assert allows(role, action, target), f"{short_name}: {variable} names {target} but no {action}"


def test_streams_are_on_demand_and_kms_encrypted(template: Template) -> None:
    streams = of_type(template, "AWS::Kinesis::Stream")
    assert {"RawStream", "CleanStream"} <= streams.keys()
    for name, stream in streams.items():
        properties = stream["Properties"]
        assert properties["StreamModeDetails"] == {"StreamMode": "ON_DEMAND"}, name
        assert "ShardCount" not in properties, name
        assert properties["StreamEncryption"]["EncryptionType"] == "KMS", name
        assert properties["Name"].endswith(("-raw", "-clean")), name


def test_buckets_block_public_access_and_are_encrypted(template: Template) -> None:
    buckets = of_type(template, "AWS::S3::Bucket")
    assert {"DataBucket", "ServerlessDeploymentBucket"} <= buckets.keys()
    for name, bucket in buckets.items():
        properties = bucket["Properties"]
        block = properties["PublicAccessBlockConfiguration"]
        assert all(
            block[key] is True
            for key in ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets")
        ), name
        rules = properties["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        assert rules[0]["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms"), name
    for policy in of_type(template, "AWS::S3::BucketPolicy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if statement["Effect"] == "Allow":  # only S3's own log delivery, into the access-log bucket
                assert statement["Principal"] == {"Service": "logging.s3.amazonaws.com"}
                assert policy["Properties"]["Bucket"] == {"Ref": "AccessLogsBucket"}
                assert statement["Condition"]["StringEquals"]["aws:SourceAccount"] == {"Ref": "AWS::AccountId"}
                continue
            assert statement["Effect"] == "Deny", "a bucket policy here denies plain-HTTP access"


def test_state_table_has_ttl_and_encryption(template: Template) -> None:
    (table,) = of_type(template, "AWS::DynamoDB::Table").values()
    properties = table["Properties"]
    assert properties["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    assert properties["AttributeDefinitions"] == [{"AttributeName": "pk", "AttributeType": "S"}]
    assert properties["TimeToLiveSpecification"] == {"AttributeName": "ttl", "Enabled": True}
    assert properties["SSESpecification"]["SSEEnabled"] is True
    assert properties["BillingMode"] == "PAY_PER_REQUEST"
    assert table["DeletionPolicy"] == "Delete", "non-prod stages are torn down whole"
    assert properties["DeletionProtectionEnabled"] is False


def test_queues_are_encrypted_and_keep_messages_as_long_as_the_streams_keep_records(template: Template) -> None:
    """A failure-queue message points into a stream: kept longer, it points at nothing."""
    queues = of_type(template, "AWS::SQS::Queue")
    assert set(queues) == {"ProcessFailureQueue", "SessionizeFailureQueue", "SweepFailureQueue"}
    (hours,) = {s["Properties"]["RetentionPeriodHours"] for s in of_type(template, "AWS::Kinesis::Stream").values()}
    for name, queue in queues.items():
        properties = queue["Properties"]
        assert properties.get("SqsManagedSseEnabled") is True or "KmsMasterKeyId" in properties, name
        assert properties["MessageRetentionPeriod"] == hours * 3600, name


def test_every_failure_queue_alarms_and_in_time_to_redrive(template: Template) -> None:
    """The first message of any failure queue alarms; so does the oldest message of the stream queues
    once it has waited half their retention, while its records can still be redriven."""
    topics = of_type(template, "AWS::SNS::Topic")
    by_queue: dict[str, dict[str, tuple[float, str]]] = {}
    for alarm in of_type(template, "AWS::CloudWatch::Alarm").values():
        properties = alarm["Properties"]
        if properties.get("Namespace") != "AWS/SQS":
            continue
        assert [action["Ref"] for action in properties["AlarmActions"]] == list(topics)
        (dimension,) = properties["Dimensions"]
        queue = dimension["Value"]["Fn::GetAtt"][0]
        threshold = (properties["Threshold"], properties["ComparisonOperator"])
        by_queue.setdefault(queue, {})[properties["MetricName"]] = threshold
    queues = of_type(template, "AWS::SQS::Queue")
    assert set(by_queue) == set(queues)
    first_message = {(0, "GreaterThanThreshold"), (1, "GreaterThanOrEqualToThreshold")}
    for queue, metrics in by_queue.items():
        assert metrics["ApproximateNumberOfMessagesVisible"] in first_message, queue
    retention = queues["SessionizeFailureQueue"]["Properties"]["MessageRetentionPeriod"]
    for queue in ("ProcessFailureQueue", "SessionizeFailureQueue"):
        age, _ = by_queue[queue]["ApproximateAgeOfOldestMessage"]
        assert 0 < age <= retention / 2, queue


def test_firehoses_write_into_one_bucket_under_their_prefix(template: Template) -> None:
    every = of_type(template, "AWS::KinesisFirehose::DeliveryStream")
    assert set(every) == {
        "RejectedDeliveryStream",
        "EventsDeliveryStream",
        "SessionsDeliveryStream",
        "RawArchiveDeliveryStream",  # the raw archive: its own test below
    }
    streams = {name: s for name, s in every.items() if name != "RawArchiveDeliveryStream"}
    partition = {"rejected": "reason", "events": "event_date", "sessions": "session_date"}
    for name, stream in streams.items():
        table = name.removesuffix("DeliveryStream").lower()
        properties = stream["Properties"]
        assert properties["DeliveryStreamType"] == "DirectPut"
        assert properties["DeliveryStreamEncryptionConfigurationInput"]["KeyType"] in (
            "AWS_OWNED_CMK",
            "CUSTOMER_MANAGED_CMK",
        )
        s3 = properties["ExtendedS3DestinationConfiguration"]
        assert s3["BucketARN"] == getatt("DataBucket")
        # Events and sessions are Parquet, compressed inside (tests/deploy/test_ops_template.py);
        # rejected records stay JSON lines, as on disk, gzipped.
        assert s3["CompressionFormat"] == ("GZIP" if table == "rejected" else "UNCOMPRESSED")
        assert s3.get("DataFormatConversionConfiguration", {}).get("Enabled", False) is (table != "rejected")
        key = partition[table]
        assert s3["Prefix"] == f"{table}/{key}=!{{partitionKeyFromQuery:{key}}}/", name
        assert s3["ErrorOutputPrefix"].startswith(f"errors/{table}/!{{firehose:error-output-type}}/"), name
        assert s3["DynamicPartitioningConfiguration"]["Enabled"] is True
        assert s3["BufferingHints"]["SizeInMBs"] >= 64, "dynamic partitioning needs a buffer of 64 MB or more"
        (processor,) = s3["ProcessingConfiguration"]["Processors"]
        # The runtime ends each record with a newline itself: no AppendDelimiterToRecord processor.
        assert processor["Type"] == "MetadataExtraction"
        query = {p["ParameterName"]: p["ParameterValue"] for p in processor["Parameters"]}["MetadataExtractionQuery"]
        assert query.startswith(f"{{{key}: "), query
        # Its role writes only under its own prefixes.
        role = template["Resources"][s3["RoleARN"]["Fn::GetAtt"][0]]
        object_grants = [s for s in statements(role) if "s3:PutObject" in as_list(s["Action"])]
        resources = sorted(r["Fn::Sub"] for s in object_grants for r in as_list(s["Resource"]))
        assert resources == sorted([f"${{DataBucket.Arn}}/{table}/*", f"${{DataBucket.Arn}}/errors/{table}/*"]), name


def test_the_raw_archive_reads_the_raw_stream_into_gzip_objects_by_arrival_hour(template: Template) -> None:
    """The archive: Firehose reads ``raw`` itself, the ``archive`` function turns each record into
    the line ``sessionflow.runtimes.aws.archive`` reads back, gzip objects under raw/<hour>/."""
    archive = importlib.import_module("sessionflow.runtimes.aws.archive")
    properties = template["Resources"]["RawArchiveDeliveryStream"]["Properties"]
    assert properties["DeliveryStreamType"] == "KinesisStreamAsSource"
    assert properties["KinesisStreamSourceConfiguration"]["KinesisStreamARN"] == getatt("RawStream")
    s3 = properties["ExtendedS3DestinationConfiguration"]
    assert s3["BucketARN"] == getatt("DataBucket") and s3["CompressionFormat"] == "GZIP"
    # The hour folders the redrive and the backfill look in: raw/YYYY/MM/DD/HH/.
    assert s3["Prefix"] == archive.PREFIX + "!{timestamp:yyyy/MM/dd/HH}/"
    assert archive.hour_prefixes(0, 0) == [archive.PREFIX + "1970/01/01/00/"]
    assert s3["ErrorOutputPrefix"].startswith("errors/raw/!{firehose:error-output-type}/")
    (processor,) = s3["ProcessingConfiguration"]["Processors"]
    parameters = {p["ParameterName"]: p["ParameterValue"] for p in processor["Parameters"]}
    assert processor["Type"] == "Lambda" and parameters["LambdaArn"] == getatt("ArchiveLambdaFunction")
    function = template["Resources"]["ArchiveLambdaFunction"]["Properties"]
    assert function["Handler"] == "sessionflow.runtimes.aws.handlers.archive_handler"
    role = template["Resources"][properties["KinesisStreamSourceConfiguration"]["RoleARN"]["Fn::GetAtt"][0]]
    for action in ("GetRecords", "GetShardIterator", "DescribeStream", "ListShards"):
        assert allows(role, f"kinesis:{action}", getatt("RawStream")), action
    assert allows(role, "lambda:InvokeFunction", getatt("ArchiveLambdaFunction"))
    object_grants = [s for s in statements(role) if "s3:PutObject" in as_list(s["Action"])]
    resources = sorted(r["Fn::Sub"] for s in object_grants for r in as_list(s["Resource"]))
    assert resources == ["${DataBucket.Arn}/errors/raw/*", "${DataBucket.Arn}/raw/*"]


def test_the_sweep_runs_one_at_a_time_and_reports_a_failed_run(template: Template) -> None:
    resources = template["Resources"]
    assert resources["SweepLambdaFunction"]["Properties"]["ReservedConcurrentExecutions"] == 1
    configs = [
        r["Properties"]
        for r in of_type(template, "AWS::Lambda::EventInvokeConfig").values()
        if r["Properties"]["FunctionName"] == {"Ref": "SweepLambdaFunction"}
    ]
    assert len(configs) == 1
    destination = configs[0]["DestinationConfig"]["OnFailure"]["Destination"]
    assert destination == getatt("SweepFailureQueue")
    assert 0 <= configs[0]["MaximumRetryAttempts"] <= 2
    assert allows(role_of(template, functions(template)["sweep"]), "sqs:SendMessage", destination)


def test_the_glue_job_rebuilds_the_last_days_from_the_archive_on_a_schedule(template: Template) -> None:
    """The job's arguments are the backfill's own: parsed by its parser, they read the archive and
    rebuild the last days of the lake; a daily trigger starts it."""
    pytest.importorskip("pyspark", reason="the backfill's entry point imports Spark")
    job_module = importlib.import_module("sessionflow.runtimes.backfill.job")
    options = importlib.import_module("sessionflow.runtimes.backfill.options")
    resources = template["Resources"]
    job = resources["BackfillJob"]["Properties"]
    assert job["Command"]["Name"] == "glueetl" and float(job["GlueVersion"]) >= 5.0  # Python 3.11
    assert job["ExecutionProperty"]["MaxConcurrentRuns"] == 1

    def value(given: Any) -> str:
        return given["Fn::Sub"].replace("${DataBucket}", "bucket") if isinstance(given, dict) else str(given)

    argv = [part for key, given in job["DefaultArguments"].items() for part in (key, value(given))]
    parser = argparse.ArgumentParser()
    options.add_arguments(parser)
    ours, foreign = job_module.drop_foreign_options(argv, parser)
    assert set(foreign) >= {"--additional-python-modules", "--job-language"}
    args = parser.parse_args(ours)
    assert args.archive is True and options.inputs_of(args) == ["s3://bucket/raw/"] and args.out == "s3://bucket/lake/"
    days = options.date_range_of(args).days()
    assert len(days) == args.last_days >= 1
    (trigger,) = of_type(template, "AWS::Glue::Trigger").values()
    assert trigger["Properties"]["Type"] == "SCHEDULED" and trigger["Properties"]["StartOnCreation"] is True
    assert trigger["Properties"]["Actions"] == [{"JobName": {"Ref": "BackfillJob"}}]
    role = template["Resources"][job["Role"]["Fn::GetAtt"][0]]
    writes = sorted(
        r["Fn::Sub"] for s in statements(role) if "s3:PutObject" in as_list(s["Action"]) for r in as_list(s["Resource"])
    )
    assert writes == ["${DataBucket.Arn}/lake/*"], "the job writes the lake, never the archive"


def test_prod_keeps_the_data_when_the_stack_goes(artifact: Path, tmp_path: Path) -> None:
    run_package(artifact, tmp_path, "prod")
    prod: Template = json.loads((tmp_path / "cloudformation-template-update-stack.json").read_text())
    for name in ("StateTable", "DataBucket", "AccessLogsBucket"):
        assert prod["Resources"][name]["DeletionPolicy"] == "Retain", name
    assert prod["Resources"]["StateTable"]["Properties"]["DeletionProtectionEnabled"] is True
    assert prod["Resources"]["RawStream"]["Properties"]["Name"] == "sessionflow-prod-raw"


# ------------------------------------------------------------------------------------------ the artifact


def test_artifact_holds_the_code_config_and_platform_wheels(artifact: Path, template: Template, tmp_path: Path) -> None:
    with zipfile.ZipFile(artifact) as archive:
        names = set(archive.namelist())
        infos = archive.infolist()
        env = functions(template)["process"]["Properties"]["Environment"]["Variables"]
        config_path = env["SESSIONFLOW_CONFIG"]
        assert config_path.startswith(TASK_ROOT)
        config_text = archive.read(config_path.removeprefix(TASK_ROOT)).decode()
    assert {"sessionflow/__init__.py", "sessionflow/core/sessionizer.py", "sessionflow/config.py"} <= names
    # Compiled for the functions' runtime and architecture, from manylinux wheels.
    assert any(re.fullmatch(r"orjson/orjson\.cpython-312-x86_64-linux-gnu\.so", n) for n in names), sorted(names)[:20]
    assert any(n.startswith("aws_lambda_powertools/") for n in names)
    assert "tzdata/zoneinfo/Europe/Paris" in names  # parse_time's zones, whatever the image has
    assert not any(n.startswith(("boto3/", "botocore/")) for n in names), "the runtime provides the SDK"
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    # Reproducible: sorted entries, fixed timestamps.
    assert [i.filename for i in infos] == sorted(i.filename for i in infos)
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert artifact.stat().st_size < 50 * 1024 * 1024
    assert sum(i.file_size for i in infos) < 250 * 1024 * 1024, "Lambda's unzipped limit"

    from sessionflow.config import Config

    shipped = tmp_path / "sessionflow.toml"
    shipped.write_text(config_text)
    Config.load(shipped)  # the config Lambda will load is one the pipeline accepts


def _top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.ImportFrom):
            names.update(alias.asname or alias.name for alias in node.names)
    return names


def test_handlers_exist_in_the_artifact(artifact: Path, template: Template) -> None:
    handlers = {f["Properties"]["Handler"] for f in of_type(template, "AWS::Lambda::Function").values()}
    modules = {h.rsplit(".", 1)[0] for h in handlers}
    for module in sorted(modules):
        runtime_source(module.removeprefix("sessionflow.").replace(".", "/") + ".py")
    with zipfile.ZipFile(artifact) as archive:
        for handler in sorted(handlers):
            module, function = handler.rsplit(".", 1)
            tree = ast.parse(archive.read(module.replace(".", "/") + ".py"))
            defined = _top_level_names(tree)
            assert function in defined, f"{handler}: no {function} at the top of {module}"


# ------------------------------------------------------------------------------------------ template vs runtime


def _client_calls(path: Path, class_name: str) -> set[str]:
    """The API methods one class of a module uses: every ``self.client.<method>``, called or passed on."""
    tree = ast.parse(path.read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name]
    methods = {
        node.attr
        for node in ast.walk(cls)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "client"
    }
    return methods - {"exceptions", "meta"}


def _action(service: str, method: str) -> str:
    return f"{service}:" + "".join(part.capitalize() for part in method.split("_"))


# What every function that runs the sessionizer calls: the state table and the two deliveries.
_SESSIONIZING_CALLS = [
    ("state/dynamodb.py", "DynamoDBStore", "dynamodb", "SESSIONFLOW_STATE_TABLE"),
    ("runtimes/aws/outputs.py", "FirehoseSink", "firehose", "SESSIONFLOW_EVENTS_FIREHOSE"),
    ("runtimes/aws/outputs.py", "FirehoseSink", "firehose", "SESSIONFLOW_SESSIONS_FIREHOSE"),
    ("runtimes/aws/outputs.py", "FirehoseSink", "firehose", "SESSIONFLOW_REJECTED_FIREHOSE"),
]


@pytest.mark.parametrize(
    ("module", "class_name", "service", "function", "env"),
    [
        ("runtimes/aws/outputs.py", "KinesisWriter", "kinesis", "process", "SESSIONFLOW_CLEAN_STREAM"),
        ("runtimes/aws/outputs.py", "FirehoseSink", "firehose", "process", "SESSIONFLOW_REJECTED_FIREHOSE"),
        *(
            (module, class_name, service, function, env)
            for function in ("sessionize", "flush", "sweep")
            for module, class_name, service, env in _SESSIONIZING_CALLS
        ),
    ],
)
def test_roles_grant_every_call_the_runtime_makes(
    template: Template, module: str, class_name: str, service: str, function: str, env: str
) -> None:
    calls = _client_calls(runtime_source(module), class_name)
    assert calls, f"{class_name} makes no client calls: has the runtime changed shape?"
    target = functions(template)[function]
    resource = getatt(target["Properties"]["Environment"]["Variables"][env]["Ref"])
    role = role_of(template, target)
    missing = [_action(service, m) for m in sorted(calls) if not allows(role, _action(service, m), resource)]
    assert not missing, f"{function}'s role lacks {missing} on {resource} (AccessDenied in AWS, unseen by moto)"


def test_flush_and_sweep_may_list_the_clean_shards(template: Template) -> None:
    for name in ("flush", "sweep"):
        assert allows(role_of(template, functions(template)[name]), "kinesis:ListShards", getatt("CleanStream"))


def test_the_sweep_runs_on_a_schedule_and_may_be_invoked_by_it(template: Template) -> None:
    resources = template["Resources"]
    rules = [r for r in resources.values() if r["Type"] == "AWS::Events::Rule"]
    assert len(rules) == 1
    rule = rules[0]["Properties"]
    assert rule["ScheduleExpression"] == "rate(5 minutes)" and rule["State"] == "ENABLED"
    assert [t["Arn"] for t in rule["Targets"]] == [getatt("SweepLambdaFunction")]
    permissions = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::Lambda::Permission"]
    assert any(
        p["Principal"] == "events.amazonaws.com" and p["FunctionName"] == getatt("SweepLambdaFunction")
        for p in permissions
    )


def test_runtime_reads_every_variable_the_template_sets(template: Template) -> None:
    # The runtime's own modules, and the config module that owns the config file's variable.
    modules = [*sorted(runtime_source("runtimes/aws/settings.py").parent.glob("*.py")), runtime_source("config.py")]
    source = "\n".join(p.read_text() for p in modules)
    for short_name, function in functions(template).items():
        for variable in function["Properties"]["Environment"]["Variables"]:
            if variable.startswith("SESSIONFLOW_"):
                assert f'"{variable}"' in source, f"{short_name}: the runtime never reads {variable}"


def test_state_ttl_attribute_is_the_runtimes(template: Template) -> None:
    """The runtime's own table setup (used locally) names the TTL attribute the deployed table must use."""
    runtime_source("state/dynamodb.py")
    dynamodb = importlib.import_module("sessionflow.state.dynamodb")  # not imported at the top: may be absent

    class Recorder:
        def __init__(self) -> None:
            self.ttl: dict[str, Any] = {}

        def create_table(self, **_: Any) -> None: ...

        def get_waiter(self, _: str) -> Recorder:
            return self

        def wait(self, **_: Any) -> None: ...

        def update_time_to_live(self, **kwargs: Any) -> None:
            self.ttl = kwargs["TimeToLiveSpecification"]

    recorder = Recorder()
    dynamodb.create_table(recorder, "t")
    (table,) = of_type(template, "AWS::DynamoDB::Table").values()
    assert table["Properties"]["TimeToLiveSpecification"] == recorder.ttl


# What the Lambda Python runtime puts on sys.path beside the function's code (/var/runtime).
LAMBDA_RUNTIME_PROVIDES = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six", "urllib3")

IMPORT_CHECK = """
import json, sys
sys.path[:0] = sys.argv[1:3]
from sessionflow.runtimes.aws import handlers
from sessionflow.runtimes.aws.settings import Settings
from sessionflow.runtimes.aws.telemetry import Telemetry
settings = Settings.from_env()
config = settings.load_config()
Telemetry(settings)  # Powertools' Logger, Metrics and Tracer (X-Ray SDK) from the artifact
print(json.dumps({
    "handlers": sorted(n for n in dir(handlers) if n.endswith("_handler")),
    "clean_rules": len(config.clean),
    "orjson": sys.modules["orjson"].__file__,
}))
"""


def test_handlers_import_from_the_artifact_alone(tmp_path: Path) -> None:
    """Unzipped with only what Lambda's runtime adds, the handlers import and load the shipped config.

    The artifact is rebuilt for this interpreter's Python (the deployed one targets 3.12), with the
    same requirements, so a dependency missing from deploy/lambda-requirements.txt fails here.
    """
    runtime_source("runtimes/aws/handlers.py")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    zipped = tmp_path / "local.zip"
    command = [sys.executable, str(ROOT / "deploy" / "build_lambda_package.py"), "--out", str(zipped)]
    subprocess.run([*command, "--python-version", version], cwd=ROOT, check=True, timeout=300)
    task_root = tmp_path / "task"
    with zipfile.ZipFile(zipped) as archive:
        archive.extractall(task_root)
    runtime_root = tmp_path / "runtime"
    runtime_root.mkdir()
    for name in LAMBDA_RUNTIME_PROVIDES:
        module = importlib.import_module(name)
        source = Path(module.__file__ or "")
        source = source.parent if source.name == "__init__.py" else source
        (runtime_root / source.name).symlink_to(source)
    env = {
        "PATH": os.environ.get("PATH", ""),
        **OFFLINE_ENV,
        "SESSIONFLOW_CONFIG": str(task_root / "sessionflow.toml"),
        "SESSIONFLOW_STATE_TTL": "7d",
    }
    # -S -I: no site-packages, no PYTHONPATH: only the task root and the runtime's own packages.
    result = subprocess.run(
        [sys.executable, "-S", "-I", "-c", IMPORT_CHECK, str(task_root), str(runtime_root)],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {"process_handler", "sessionize_handler"} <= set(report["handlers"])
    assert report["orjson"].startswith(str(task_root))
    assert report["clean_rules"] == 2  # deploy/sessionflow.toml's rules (the default config has none)
