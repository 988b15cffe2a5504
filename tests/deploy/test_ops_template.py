"""The packaged template's lake catalog and operations: what Athena reads, what an operator sees.

* the Glue tables carry the columns and types of the Parquet lake ``sessionflow run`` writes (read
  with pyarrow from a real lake, with the config the stack ships), and the views over them keep one
  row per key (their SQL run by DuckDB over a lake holding copies);
* the Firehoses convert to Parquet with those tables; the saved Athena queries answer on a real lake;
* alarms watch what can go wrong, on the stack's topic; the dashboard draws metrics the runtime emits;
* checkov finds no failed check, and each skip says why.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import statistics
import subprocess
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sessionflow.config import Config
from tests.deploy import test_serverless_package as package
from tests.deploy.test_serverless_package import ROOT, Template, allows, as_list, functions, getatt, of_type, role_of

pytestmark = pytest.mark.aws
DEPLOYED_CONFIG = ROOT / "deploy" / "sessionflow.toml"
TABLES = ("events", "sessions", "rejected")
PARTITIONS = {"events": "event_date", "sessions": "session_date", "rejected": "reason"}
STAGE_SERVICE = "sessionflow-ci"  # POWERTOOLS_SERVICE_NAME of the built stage


def _sub(text: str, values: dict[str, str] | None = None) -> str:
    """Fn::Sub with made-up values for the stack's references (``${X}``, ``${X.Arn}``)."""
    values = values or {}
    return re.sub(r"\$\{([^}!]+)\}", lambda m: values.get(m.group(1), f"<{m.group(1)}>"), text)


def _resolve(value: Any, values: dict[str, str]) -> str:
    """The few intrinsic functions the catalog's strings use, resolved as CloudFormation would."""
    if isinstance(value, str):
        return value
    ((function, argument),) = value.items()
    if function == "Fn::Join":
        return str(argument[0]).join(_resolve(part, values) for part in argument[1])
    if function == "Fn::Base64":
        return base64.b64encode(_resolve(argument, values).encode()).decode()
    if function == "Fn::Sub":
        text = argument if isinstance(argument, str) else argument[0]
        return _sub(text, values)
    raise AssertionError(f"unexpected {function}")


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `serverless package` output the other deployment tests check (built once per run)."""
    zipped = package.built_once(tmp_path_factory, "lambda", package.build_artifact) / package.ARTIFACT
    return package.built_once(
        tmp_path_factory, "serverless", lambda out: package.run_package(zipped, out, package.STAGE)
    )


@pytest.fixture(scope="module")
def stack(built: Path) -> Template:
    loaded: Template = json.loads((built / "cloudformation-template-update-stack.json").read_text())
    return loaded


# ------------------------------------------------------------------------------------------ a real lake


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``sessionflow run`` with the config the stack ships, on a feed of the last few days."""
    from sessionflow.cli import main
    from sessionflow.synthetic import FeedShape, generate

    folder = tmp_path_factory.mktemp("lake")
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=4)
    feed = folder / "feed.jsonl"
    feed.write_bytes(b"\n".join(generate(FeedShape(events=2500, machines=40, start=start, seed=21))) + b"\n")
    out = folder / "lake"
    command = ["run", str(feed), "--out", str(out), "--config", str(DEPLOYED_CONFIG), "--quiet", "--workers", "0"]
    assert main(command) == 0
    assert main(["verify", str(out)]) == 0
    return out


# An independent reading of Arrow types as Glue (Hive) types: what Athena calls each column.
def _glue_type(arrow_type: Any) -> str:
    import pyarrow as pa

    if pa.types.is_map(arrow_type):
        return f"map<{_glue_type(arrow_type.key_type)},{_glue_type(arrow_type.item_type)}>"
    if pa.types.is_timestamp(arrow_type):
        assert arrow_type.unit == "ms" and arrow_type.tz == "UTC"
        return "timestamp"
    names = {
        pa.string(): "string",
        pa.large_string(): "string",
        pa.int64(): "bigint",
        pa.int32(): "int",
        pa.int8(): "tinyint",
        pa.bool_(): "boolean",
        pa.float64(): "double",
    }
    return names[arrow_type]


def _columns(stack: Template, logical_id: str) -> list[tuple[str, str]]:
    table_input = stack["Resources"][logical_id]["Properties"]["TableInput"]
    return [(c["Name"], c["Type"]) for c in table_input["StorageDescriptor"]["Columns"]]


def _table_input(stack: Template, logical_id: str) -> dict[str, Any]:
    table_input: dict[str, Any] = stack["Resources"][logical_id]["Properties"]["TableInput"]
    return table_input


def test_glue_tables_have_the_columns_of_the_lake_sessionflow_run_writes(stack: Template, lake: Path) -> None:
    import pyarrow.dataset as ds

    for table in ("events", "sessions"):
        files = ds.dataset(lake / table, format="parquet", partitioning="hive")
        partition = PARTITIONS[table]
        on_disk = [(f.name, _glue_type(f.type)) for f in files.schema if f.name != partition]
        assert _columns(stack, f"{table.capitalize()}DeliveredTable") == on_disk, table
        # The view a reader queries: the same columns, then the partition.
        view = _columns(stack, f"{table.capitalize()}View")
        assert view == [*on_disk, (partition, "date")], table
    # Rejected records stay JSON lines: their keys and JSON types, the reason being the partition.
    rows = [json.loads(line) for path in sorted((lake / "rejected").rglob("*.jsonl")) for line in path.open()]
    assert rows
    json_types = {str: "string", int: "bigint"}
    keys = list(rows[0])
    assert all(list(row) == keys for row in rows)
    seen = {key: {json_types[type(row[key])] for row in rows if row[key] is not None} for key in keys}
    on_disk = [(key, *seen[key]) for key in keys if key != "reason"]
    assert _columns(stack, "RejectedDeliveredTable") == on_disk
    assert _columns(stack, "RejectedView") == [*on_disk, ("reason", "string")]


def test_partitions_are_projected_over_every_folder_a_lake_has(stack: Template, lake: Path) -> None:
    from sessionflow.core import Reason

    for table in TABLES:
        table_input = _table_input(stack, f"{table.capitalize()}DeliveredTable")
        partition = PARTITIONS[table]
        (key,) = table_input["PartitionKeys"]
        assert key["Name"] == partition
        parameters = table_input["Parameters"]
        assert parameters["projection.enabled"] == "true"
        location = table_input["StorageDescriptor"]["Location"]
        assert location == {"Fn::Sub": f"s3://${{DataBucket}}/{table}/"}  # Hive layout: <location><key>=<value>/
        folders = [p.name.split("=", 1) for p in (lake / table).iterdir() if p.is_dir()]
        assert folders and all(name == partition for name, _ in folders)
        values = [value for _, value in folders]
        if key["Type"] == "date":
            assert parameters[f"projection.{partition}.type"] == "date"
            assert parameters[f"projection.{partition}.format"] == "yyyy-MM-dd"
            first, last = parameters[f"projection.{partition}.range"].split(",")
            accepted_from = datetime.fromtimestamp(Config.load(DEPLOYED_CONFIG).validation.min_timestamp_ms / 1000, UTC)
            assert first == accepted_from.date().isoformat() and re.fullmatch(r"NOW\+\d+DAYS", last)
            assert all(date.fromisoformat(value) >= date.fromisoformat(first) for value in values)
        else:
            assert parameters[f"projection.{partition}.type"] == "enum"
            projected = parameters[f"projection.{partition}.values"].split(",")
            assert sorted(projected) == sorted(reason.value for reason in Reason)
            assert set(values) <= set(projected)


def test_firehoses_write_parquet_with_the_tables_schema(stack: Template) -> None:
    from sessionflow.core.enrich import iso_time

    for table in ("Events", "Sessions"):
        s3 = stack["Resources"][f"{table}DeliveryStream"]["Properties"]["ExtendedS3DestinationConfiguration"]
        conversion = s3["DataFormatConversionConfiguration"]
        assert conversion["Enabled"] is True
        assert conversion["OutputFormatConfiguration"]["Serializer"]["ParquetSerDe"]["Compression"] == "GZIP"
        schema = conversion["SchemaConfiguration"]
        assert schema["TableName"] == {"Ref": f"{table}DeliveredTable"}
        assert schema["DatabaseName"] == {"Ref": "LakeDatabase"}
        assert schema["VersionId"] == "LATEST"
        role = stack["Resources"][schema["RoleARN"]["Fn::GetAtt"][0]]
        assert s3["RoleARN"] == schema["RoleARN"]
        table_arn = {
            "Fn::Sub": "arn:${AWS::Partition}:glue:${AWS::Region}:${AWS::AccountId}:table/${LakeDatabase}/"
            f"${{{table}DeliveredTable}}"
        }
        for action in ("glue:GetTable", "glue:GetTableVersion", "glue:GetTableVersions"):
            assert allows(role, action, table_arn), f"{table}: {action}"
        # The JSON rows' instants are parsed with a Joda pattern: it must read what the core writes.
        (pattern,) = conversion["InputFormatConfiguration"]["Deserializer"]["HiveJsonSerDe"]["TimestampFormats"]
        regex = _joda_regex(pattern)
        for ms in (0, 1_791_277_300_123, 253_402_300_799_999, 86_399_999):
            assert re.fullmatch(regex, iso_time(ms)), (pattern, iso_time(ms))


def _joda_regex(pattern: str) -> str:
    """A Joda-Time pattern of fixed-width fields and quoted literals, as a regular expression."""
    widths = {"yyyy": r"\d{4}", "MM": r"\d{2}", "dd": r"\d{2}", "HH": r"\d{2}", "mm": r"\d{2}", "ss": r"\d{2}"}
    widths["SSS"] = r"\d{3}"
    out, rest = "", pattern
    while rest:
        if rest.startswith("'"):
            literal, rest = rest[1:].split("'", 1)
            out += re.escape(literal)
            continue
        token = next((t for t in sorted(widths, key=len, reverse=True) if rest.startswith(t)), None)
        if token is None:
            out, rest = out + re.escape(rest[0]), rest[1:]
            continue
        out, rest = out + widths[token], rest[len(token) :]
    return out


# ------------------------------------------------------------------------------------------ the views, on DuckDB


def _view_definition(stack: Template, logical_id: str, database: str) -> dict[str, Any]:
    table_input = _table_input(stack, logical_id)
    assert table_input["TableType"] == "VIRTUAL_VIEW"
    assert table_input["Parameters"] == {"presto_view": "true", "comment": "Presto View"}
    assert table_input["ViewExpandedText"] == "/* Presto View */"
    text = _resolve(table_input["ViewOriginalText"], {"Database": database})
    match = re.fullmatch(r"/\* Presto View: (\S+) \*/", text)
    assert match, text[:80]
    definition: dict[str, Any] = json.loads(base64.b64decode(match.group(1)))
    return definition


TRINO_OF_GLUE = {
    "string": "varchar",
    "bigint": "bigint",
    "int": "integer",
    "tinyint": "tinyint",
    "boolean": "boolean",
    "double": "double",
    "timestamp": "timestamp(3)",
    "date": "date",
    "map<string,bigint>": "map(varchar,bigint)",
}


@pytest.fixture(scope="module")
def duck(stack: Template, lake: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """DuckDB over the lake as Firehose would leave it, copies included: ``<table>_delivered``."""
    duckdb = pytest.importorskip("duckdb")
    copies = tmp_path_factory.mktemp("copies")
    connection = duckdb.connect()
    for table in TABLES:
        delivered = _table_input(stack, f"{table.capitalize()}DeliveredTable")["Name"]
        assert delivered == f"{table}_delivered"
        # A re-delivery: a second object holding exact copies of one object's rows.
        original = sorted(p for p in (lake / table).rglob("*") if p.is_file())[0]
        target = copies / table / original.parent.name
        target.mkdir(parents=True)
        shutil.copy(original, target / ("copy-" + original.name))
        if table == "rejected":
            # As Athena reads them: the table's columns from the JSON, the reason from the folder.
            columns = {
                name: {"string": "VARCHAR", "bigint": "BIGINT"}[kind]
                for name, kind in _columns(stack, "RejectedDeliveredTable")
            }
            source = (
                f"read_json(['{lake}/{table}/*/*.jsonl', '{copies}/{table}/*/*'], format = 'newline_delimited', "
                f"hive_partitioning = true, columns = {columns!r})"
            )
        else:
            source = f"read_parquet(['{lake}/{table}/*/*.parquet', '{copies}/{table}/*/*'], hive_partitioning = true)"
        connection.execute(f"CREATE VIEW {delivered} AS SELECT * FROM {source}")
    return connection


@pytest.fixture(scope="module")
def views(stack: Template, duck: Any) -> dict[str, dict[str, Any]]:
    """Each view's definition as Athena would store it; DuckDB gets the view, by its SQL."""
    definitions = {}
    for table in TABLES:
        definitions[table] = _view_definition(stack, f"{table.capitalize()}View", "sessionflow_ci")
        duck.execute(f"CREATE VIEW {table} AS {definitions[table]['originalSql']}")
    return definitions


def test_views_keep_one_row_per_key_of_a_lake_with_copies(
    stack: Template, duck: Any, views: dict[str, dict[str, Any]]
) -> None:
    for table in TABLES:
        definition = views[table]
        assert definition["catalog"] == "awsdatacatalog" and definition["schema"] == "sessionflow_ci"
        glue = _columns(stack, f"{table.capitalize()}View")
        assert [(c["name"], c["type"]) for c in definition["columns"]] == [(n, TRINO_OF_GLUE[t]) for n, t in glue]
        names = ", ".join(f'"{name}"' for name, _ in glue)
        delivered = duck.execute(f"SELECT count(*) FROM {table}_delivered").fetchone()[0]
        unique = duck.execute(f"SELECT count(*) FROM (SELECT DISTINCT {names} FROM {table}_delivered)").fetchone()[0]
        assert delivered > unique, f"{table}: the fixture must hold copies"
        rows = duck.execute(definition["originalSql"]).fetchall()
        assert len(rows) == unique, table
        expected = duck.execute(f"SELECT DISTINCT {names} FROM {table}_delivered").fetchall()
        assert Counter(map(repr, rows)) == Counter(map(repr, expected)), table
        assert duck.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == unique


def test_saved_queries_answer_the_first_questions(
    stack: Template, duck: Any, views: dict[str, dict[str, Any]], lake: Path
) -> None:
    import pyarrow.dataset as ds

    # Athena's approximate percentile, exact here, so the answer can be checked exactly.
    duck.execute("CREATE OR REPLACE MACRO approx_percentile(x, q) AS quantile_cont(x, q)")
    queries = {q["Properties"]["Name"]: q["Properties"] for q in of_type(stack, "AWS::Athena::NamedQuery").values()}
    assert set(queries) == {"sessions per day", "median session duration"}
    for query in queries.values():
        assert query["Database"] == {"Ref": "LakeDatabase"} and query["WorkGroup"] == {"Ref": "AthenaWorkGroup"}
    sessions = ds.dataset(lake / "sessions", format="parquet", partitioning="hive").to_table().to_pylist()
    by_day: dict[str, list[dict[str, Any]]] = {}
    for session in sessions:
        by_day.setdefault(str(session["session_date"]), []).append(session)
    assert len(by_day) >= 2

    per_day = duck.execute(queries["sessions per day"]["QueryString"]).fetchall()
    assert [(str(d), n, m) for d, n, m in per_day] == [
        (day, len(rows), len({r["machine_id"] for r in rows})) for day, rows in sorted(by_day.items())
    ]
    durations = duck.execute(queries["median session duration"]["QueryString"]).fetchall()
    assert [str(d) for d, _, _ in durations] == sorted(by_day)
    for (_, median, _), (_, rows) in zip(durations, sorted(by_day.items()), strict=True):
        assert median == pytest.approx(statistics.median(r["duration_ms"] for r in rows) / 1000)


# ------------------------------------------------------------------------------------------ alarms, dashboard


def _alarms(stack: Template) -> dict[str, dict[str, Any]]:
    return {name: r["Properties"] for name, r in of_type(stack, "AWS::CloudWatch::Alarm").items()}


def _watched(alarm: dict[str, Any]) -> set[tuple[str, str, str]]:
    """(namespace, metric, what) of each metric an alarm reads, ``what`` a dimension's value."""
    metrics = (
        [alarm] if "MetricName" in alarm else [m["MetricStat"]["Metric"] for m in alarm["Metrics"] if "MetricStat" in m]
    )
    return {(m["Namespace"], m["MetricName"], json.dumps(m["Dimensions"][0]["Value"], sort_keys=True)) for m in metrics}


def test_alarms_watch_what_goes_wrong_and_tell_the_topic(stack: Template) -> None:
    alarms = _alarms(stack)
    watched = set().union(*(_watched(a) for a in alarms.values()))

    def ref(name: str) -> str:
        return json.dumps({"Ref": name})

    for function in ("Process", "Sessionize"):
        assert ("AWS/Lambda", "IteratorAge", ref(f"{function}LambdaFunction")) in watched
        queue = json.dumps({"Fn::GetAtt": [f"{function}FailureQueue", "QueueName"]}, sort_keys=True)
        assert ("AWS/SQS", "ApproximateNumberOfMessagesVisible", queue) in watched
    for function in ("Process", "Sessionize", "Flush", "Sweep"):
        for metric in ("Errors", "Throttles"):
            assert ("AWS/Lambda", metric, ref(f"{function}LambdaFunction")) in watched, (function, metric)
    for stream in ("Events", "Sessions", "Rejected"):
        assert ("AWS/Firehose", "DeliveryToS3.DataFreshness", ref(f"{stream}DeliveryStream")) in watched
    for stream in ("Events", "Sessions"):
        assert ("AWS/Firehose", "FailedConversion.Records", ref(f"{stream}DeliveryStream")) in watched
    for metric in ("ReadThrottleEvents", "WriteThrottleEvents"):
        assert ("AWS/DynamoDB", metric, ref("StateTable")) in watched

    for name, alarm in alarms.items():
        assert alarm["AlarmActions"] == alarm["OKActions"] == [{"Ref": "AlarmTopic"}], name
        assert alarm["TreatMissingData"] == "notBreaching", name
        assert "docs/deploy.md" in alarm["AlarmDescription"], f"{name}: say where the runbook is"
        assert isinstance(alarm["Threshold"], int | float) and alarm["Threshold"] > 0, name
    assert alarms["ProcessIteratorAgeAlarm"]["Threshold"] == 300_000  # the param's default
    # CloudWatch publishes only to a topic whose key lets it: the stack's own key, rotated.
    topic = stack["Resources"]["AlarmTopic"]["Properties"]
    assert topic["KmsMasterKeyId"] == {"Ref": "OpsKey"}
    key = stack["Resources"]["OpsKey"]["Properties"]
    assert key["EnableKeyRotation"] is True
    assert any(s["Principal"] == {"Service": "cloudwatch.amazonaws.com"} for s in key["KeyPolicy"]["Statement"])
    subscription = stack["Resources"]["AlarmEmailSubscription"]
    assert subscription["Condition"] == "HasAlarmEmail" and stack["Parameters"]["AlarmEmail"]["Default"] == ""


def test_the_dashboard_draws_what_the_runtime_emits_and_every_alarm(stack: Template) -> None:
    from sessionflow.runtimes.aws.telemetry import METRICS

    body = stack["Resources"]["Dashboard"]["Properties"]["DashboardBody"]
    widgets = json.loads(_sub(body["Fn::Sub"]))["widgets"]
    ours = [m for w in widgets if w["type"] == "metric" for m in w["properties"]["metrics"] if m[0] == "sessionflow"]
    assert len(ours) >= 20
    for metric in ours:
        assert metric[1] in METRICS, f"the runtime never emits {metric[1]}"
        dimensions = dict(zip(metric[2:-1:2], metric[3:-1:2], strict=True))
        assert dimensions["service"] == STAGE_SERVICE and dimensions["function"] in {"process", "sessionize", "sweep"}
    for function in functions(stack).values():
        env = function["Properties"]["Environment"]["Variables"]
        assert env["POWERTOOLS_SERVICE_NAME"] == STAGE_SERVICE and env["POWERTOOLS_METRICS_NAMESPACE"] == "sessionflow"
    searches = [
        m[0]["expression"]
        for w in widgets
        if w["type"] == "metric"
        for m in w["properties"]["metrics"]
        if isinstance(m[0], dict)
    ]
    assert any('MetricName="RecordsRejected"' in s and "reason" in s for s in searches)
    (alarm_widget,) = [w for w in widgets if w["type"] == "alarm"]
    assert sorted(alarm_widget["properties"]["alarms"]) == sorted(f"<{name}.Arn>" for name in _alarms(stack))
    # Where widgets sit: on the grid, none over another.
    cells = Counter(
        (w["x"] + dx, w["y"] + dy) for w in widgets for dx in range(w["width"]) for dy in range(w["height"])
    )
    assert max(cells.values()) == 1 and all(w["x"] + w["width"] <= 24 for w in widgets)


def test_functions_are_traced_and_sweep_and_flush_run_alone(stack: Template) -> None:
    for name, function in functions(stack).items():
        assert function["Properties"]["TracingConfig"] == {"Mode": "Active"}, name
        assert allows(role_of(stack, function), "xray:PutTraceSegments", "*"), name
    fns = functions(stack)
    assert fns["sweep"]["Properties"]["ReservedConcurrentExecutions"] == 1
    assert fns["flush"]["Properties"]["ReservedConcurrentExecutions"] == 1


def test_buckets_are_versioned_and_log_their_access(stack: Template) -> None:
    resources = stack["Resources"]
    for name in ("DataBucket", "ServerlessDeploymentBucket", "AccessLogsBucket"):
        assert resources[name]["Properties"]["VersioningConfiguration"] == {"Status": "Enabled"}, name
    for name in ("DataBucket", "ServerlessDeploymentBucket"):
        logging = resources[name]["Properties"]["LoggingConfiguration"]
        assert logging["DestinationBucketName"] == {"Ref": "AccessLogsBucket"}, name
    (delivery,) = [
        s
        for s in resources["AccessLogsBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
        if s["Effect"] == "Allow"
    ]
    assert sorted(map(json.dumps, delivery["Condition"]["ArnLike"]["aws:SourceArn"])) == sorted(
        json.dumps(getatt(name)) for name in ("DataBucket", "ServerlessDeploymentBucket")
    )
    for group in of_type(stack, "AWS::Logs::LogGroup").values():
        assert group["Properties"]["KmsKeyId"] == getatt("OpsKey")


# ------------------------------------------------------------------------------------------ checkov


def _checkov() -> str:
    found = ROOT / ".venv-scan" / "bin" / "checkov"
    if found.is_file():
        return str(found)
    on_path = shutil.which("checkov")
    if on_path is None:
        pytest.skip("checkov is not installed: `make scan-deps` (the `scan` extra, in a virtualenv of its own)")
    return on_path


def test_checkov_fails_no_check_and_every_skip_says_why(built: Path, stack: Template) -> None:
    scanned = built / "cloudformation-template-update-stack.json"
    # --skip-download: checkov fetches nothing (doc links, severities) from its vendor's service.
    command = [_checkov(), "--skip-download", "--framework", "cloudformation", "--output", "json", "-f", str(scanned)]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report = json.loads(result.stdout)
    summary = report["summary"]
    failed = [f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in report["results"]["failed_checks"]]
    assert not failed, "\n".join(failed)
    assert summary["parsing_errors"] == 0 and summary["passed"] > 100, summary
    assert result.returncode == 0

    written = {
        (name, skip["id"]): skip.get("comment", "")
        for name, resource in stack["Resources"].items()
        for skip in as_list(resource.get("Metadata", {}).get("checkov", {}).get("skip", []))
    }
    assert written
    for (name, check), comment in written.items():
        assert len(comment.split()) >= 8, f"{name} skips {check} without saying why"
    skipped = {(c["resource"].split(".", 1)[1], c["check_id"]) for c in report["results"]["skipped_checks"]}
    assert skipped == set(written), "a skip checkov did not honour, or one it made up"
