"""template.yaml: `sam validate --lint` and cfn-lint pass, and the properties that matter hold
(runtime, private bucket, prefix-filtered triggers with no loop, least-privilege IAM, auth switch)."""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harmony_aws.config import Settings
from harmony_local.stack.template import expand_language_extensions, load_template, load_yaml
from tests.support import REPO, TEMPLATE

SAM = os.environ.get("HARMONY_SAM") or str(REPO / ".tools" / "sam" / "bin" / "sam")
# The shards the tests deploy: three, so that nothing assumes a power of two or the old limit of 4.
SHARD_IDS = "0,1,2"
SHARDS = 3


@pytest.fixture(scope="module")
def raw() -> dict:
    """The template as written (intrinsics unresolved, Fn::ForEach not expanded)."""
    return load_yaml(TEMPLATE)


@pytest.fixture(scope="module")
def tpl(raw) -> dict:
    """The template with ShardIds=SHARD_IDS, its Fn::ForEach expanded as CloudFormation's
    AWS::LanguageExtensions does before the SAM transform (other intrinsics unresolved)."""
    return expand_language_extensions(raw, {"ShardIds": SHARD_IDS})


def _env():
    # SAM CLI expands template.yaml's Fn::ForEach only when asked (samconfig.toml asks too)
    return {
        **os.environ,
        "AWS_DEFAULT_REGION": "us-east-1",
        "SAM_CLI_TELEMETRY": "0",
        "SAM_CLI_ENABLE_LANGUAGE_EXTENSIONS": "1",
    }


def test_sam_validate_lint():
    if not (os.path.exists(SAM) or shutil.which(SAM)):
        pytest.skip(
            f"SAM CLI not installed at {SAM} (python3 -m venv .tools/sam && .tools/sam/bin/pip install aws-sam-cli)"
        )
    r = subprocess.run(
        [SAM, "validate", "--lint", "-t", str(TEMPLATE)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "is a valid SAM Template" in r.stdout + r.stderr


def test_cfn_lint():
    exe: str | Path | None = Path(sys.executable).parent / "cfn-lint"
    if not Path(str(exe)).exists():
        exe = shutil.which("cfn-lint")
        if not exe:
            pytest.skip("cfn-lint is not installed in this environment (pip install cfn-lint)")
    r = subprocess.run([str(exe), str(TEMPLATE)], capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_lint_catches_a_broken_template(tmp_path):
    """The lint test above can fail: a dangling reference is reported."""
    exe = Path(sys.executable).parent / "cfn-lint"
    if not exe.exists():
        pytest.skip("cfn-lint is not installed")
    bad = tmp_path / "template.yaml"
    text = TEMPLATE.read_text()
    assert "    Value: !Ref CatalogBucket\n" in text
    bad.write_text(text.replace("    Value: !Ref CatalogBucket\n", "    Value: !Ref NoSuchBucket\n"))
    r = subprocess.run([str(exe), str(bad)], capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode != 0 and "NoSuchBucket" in r.stdout


def _functions(tpl):
    return {k: v for k, v in tpl["Resources"].items() if v["Type"] == "AWS::Serverless::Function"}


def test_runtime_architecture_layers(tpl):
    g = tpl["Globals"]["Function"]
    assert g["Runtime"] == "python3.13"
    assert g["Architectures"] == [{"Ref": "Architecture"}]
    assert tpl["Parameters"]["Architecture"]["Default"] == "x86_64"
    assert set(tpl["Parameters"]["Architecture"]["AllowedValues"]) == {"x86_64", "arm64"}
    assert g["Layers"] == [{"Ref": "DepsLayer"}, {"Ref": "EngineLayer"}]
    layers = load_template(TEMPLATE).layers
    assert sorted(layers) == ["DepsLayer", "EngineLayer"]
    for lid, layer in layers.items():
        assert layer.build_method == "makefile"
        assert f"build-{lid}:" in (layer.build_dir / "Makefile").read_text()
    # the engine layer is built from the packages' source; its Makefile packs only what ships
    assert layers["EngineLayer"].content_uri == REPO / "src"
    assert "PACKAGES := harmony_image harmony_aws\n" in (layers["EngineLayer"].build_dir / "Makefile").read_text()
    assert "opencv-python-headless==5.0.0.93" in (REPO / "layers/deps/requirements.txt").read_text()
    assert "numpy==2.4.6" in (REPO / "layers/deps/requirements.txt").read_text()


def test_bucket_is_private_encrypted_tls_only(tpl):
    b = tpl["Resources"]["CatalogBucket"]["Properties"]
    assert b["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"][
        "SSEAlgorithm"
    ]
    assert all(
        b["PublicAccessBlockConfiguration"][k] is True
        for k in ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets")
    )
    stmt = tpl["Resources"]["CatalogBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert any(s["Effect"] == "Deny" and s["Condition"]["Bool"]["aws:SecureTransport"] == "false" for s in stmt)


def test_triggers_filtered_by_prefix_and_results_trigger_nothing(tpl):
    """catalog/ changes reach IndexFunction through IndexQueue (the bucket's QueueConfigurations
    and the function's SQS event), queries/ reach QueryDropFunction directly (its S3 event)."""
    triggers: dict[str, set[tuple[str, str]]] = {}
    queue_consumer = {}
    for lid, fn in _functions(tpl).items():
        for ev in (fn["Properties"].get("Events") or {}).values():
            if ev["Type"] == "S3":
                assert ev["Properties"]["Bucket"] == {"Ref": "CatalogBucket"}
                rules = ev["Properties"]["Filter"]["S3Key"]["Rules"]
                prefix = next(r["Value"] for r in rules if r["Name"] == "prefix")
                triggers.setdefault(lid, set()).add((ev["Properties"]["Events"], prefix))
            elif ev["Type"] == "SQS":
                queue_consumer[ev["Properties"]["Queue"]["Fn::GetAtt"][0]] = lid
    bucket = tpl["Resources"]["CatalogBucket"]["Properties"]
    for qc in bucket["NotificationConfiguration"]["QueueConfigurations"]:
        prefix = next(r["Value"] for r in qc["Filter"]["S3Key"]["Rules"] if r["Name"] == "prefix")
        triggers.setdefault(queue_consumer[qc["Queue"]["Fn::GetAtt"][0]], set()).add((qc["Event"], prefix))
    assert triggers == {
        "IndexFunction": {("s3:ObjectCreated:*", "catalog/"), ("s3:ObjectRemoved:*", "catalog/")},
        "QueryDropFunction": {("s3:ObjectCreated:*", "queries/")},
    }
    # the local stack reads the same wiring from the template
    local = load_template(TEMPLATE)
    assert {(n.queue, n.events, n.rules) for n in local.queue_notifications} == {
        ("IndexQueue", ("s3:ObjectCreated:*",), (("prefix", "catalog/"),)),
        ("IndexQueue", ("s3:ObjectRemoved:*",), (("prefix", "catalog/"),)),
    }
    assert sorted((s.function, s.queue) for s in local.sqs_triggers) == [
        ("DuplicatesFunction", "DuplicatesQueue"),
        ("IndexFunction", "IndexQueue"),
        ("IndexFunction", "ReindexQueue"),
    ]


def test_index_queue_batches_cap_and_dead_letters(tpl):
    """IndexQueue: encrypted, S3 may send to it (this bucket, this account only), a visibility
    timeout of at least 6x the function's timeout plus its batching window (Lambda's advice), a
    redrive to the alarmed dead-letter queue; the function reports partial batch failures and
    runs at most IndexMaxConcurrency batches at once, within its reserved concurrency."""
    res = tpl["Resources"]
    fn = res["IndexFunction"]["Properties"]
    assert {e["Type"] for e in fn["Events"].values()} == {"SQS", "Schedule"}
    ev = fn["Events"]["CatalogQueue"]
    assert ev["Type"] == "SQS"
    sqs = ev["Properties"]
    assert sqs["Queue"] == {"Fn::GetAtt": ["IndexQueue", "Arn"]}
    assert sqs["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert 1 <= sqs["BatchSize"] <= 10
    cap = sqs["ScalingConfig"]["MaximumConcurrency"]
    assert tpl["Parameters"][cap["Ref"]]["MinValue"] == 2  # Lambda's minimum
    assert _param_default(tpl, cap) <= _param_default(tpl, fn["ReservedConcurrentExecutions"]["Fn::If"][1])
    queue = res["IndexQueue"]["Properties"]
    assert queue["SqsManagedSseEnabled"] is True
    assert queue["VisibilityTimeout"] >= 6 * fn["Timeout"] + sqs["MaximumBatchingWindowInSeconds"]
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["IndexDeadLetterQueue", "Arn"]}
    assert queue["RedrivePolicy"]["maxReceiveCount"] >= 5
    dlq = res["IndexDeadLetterQueue"]["Properties"]
    assert dlq["MessageRetentionPeriod"] > queue["MessageRetentionPeriod"]  # a redriven message keeps its age
    assert "EventInvokeConfig" not in fn and "DeadLetterQueue" not in fn  # not invoked asynchronously
    (stmt,) = res["IndexQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert res["IndexQueuePolicy"]["Properties"]["Queues"] == [{"Ref": "IndexQueue"}]
    assert (stmt["Effect"], stmt["Principal"], stmt["Action"]) == (
        "Allow",
        {"Service": "s3.amazonaws.com"},
        "sqs:SendMessage",
    )
    bucket_name = res["CatalogBucket"]["Properties"]["BucketName"]["Fn::Sub"]
    assert stmt["Condition"]["ArnEquals"]["aws:SourceArn"] == {"Fn::Sub": f"arn:${{AWS::Partition}}:s3:::{bucket_name}"}
    assert stmt["Condition"]["StringEquals"]["aws:SourceAccount"] == {"Ref": "AWS::AccountId"}
    # S3 checks the destination when the notifications are set: the policy must exist first
    assert res["CatalogBucket"]["DependsOn"] == "IndexQueuePolicy"


def test_reindex_queue_slices_retries_and_dead_letters(tpl):
    """ReindexQueue: IndexFunction's second SQS source, one slice per invocation, partial batch
    failures, a visibility timeout of at least 6x the function's timeout, a redrive after
    reindex_jobs.MAX_RECEIVES receives (the last one counts the failed keys); both sources' caps
    fit in the function's reservation; the function knows the queue's URL."""
    from harmony_aws import reindex_jobs

    res = tpl["Resources"]
    fn = res["IndexFunction"]["Properties"]
    sqs = fn["Events"]["ReindexSlices"]["Properties"]
    assert sqs["Queue"] == {"Fn::GetAtt": ["ReindexQueue", "Arn"]}
    assert sqs["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert sqs["BatchSize"] == 1
    cap = sqs["ScalingConfig"]["MaximumConcurrency"]
    assert tpl["Parameters"][cap["Ref"]]["MinValue"] == 2
    index_cap = fn["Events"]["CatalogQueue"]["Properties"]["ScalingConfig"]["MaximumConcurrency"]
    reserved = fn["ReservedConcurrentExecutions"]["Fn::If"][1]
    assert _param_default(tpl, cap) + _param_default(tpl, index_cap) <= _param_default(tpl, reserved)
    queue = res["ReindexQueue"]["Properties"]
    assert queue["SqsManagedSseEnabled"] is True
    assert queue["VisibilityTimeout"] >= 6 * fn["Timeout"]
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["ReindexDeadLetterQueue", "Arn"]}
    assert queue["RedrivePolicy"]["maxReceiveCount"] == reindex_jobs.MAX_RECEIVES
    dlq = res["ReindexDeadLetterQueue"]["Properties"]
    assert dlq["MessageRetentionPeriod"] > queue["MessageRetentionPeriod"]
    assert fn["Environment"]["Variables"]["HARMONY_REINDEX_QUEUE_URL"] == {"Ref": "ReindexQueue"}


def _statements(fn):
    """Every statement a function may get (a conditional policy's: both branches)."""
    out: list[dict] = []
    for pol in fn["Properties"].get("Policies", []):
        branches = pol["Fn::If"][1:] if "Fn::If" in pol else [pol]
        for b in branches:
            out += b.get("Statement", []) if isinstance(b, dict) else []
    return out


def _resource_text(stmt) -> list[str]:
    res = stmt["Resource"]
    if isinstance(res, dict) and "Fn::If" in res:  # both branches
        res = [r for branch in res["Fn::If"][1:] for r in branch]
    res = res if isinstance(res, list) else [res]
    texts = []
    for r in res:
        if isinstance(r, dict) and "Fn::Sub" in r:
            texts.append(r["Fn::Sub"])
        elif isinstance(r, dict) and "Fn::GetAtt" in r:
            texts.append("${{{}.Arn}}".format(r["Fn::GetAtt"][0]))
        else:
            texts.append(str(r))
    return texts


SHARD_FUNCTION_ARNS = "arn:${AWS::Partition}:lambda:${AWS::Region}:${AWS::AccountId}:function:${AWS::StackName}-shard-*"


def test_least_privilege(tpl):
    allowed = {
        # DELETE /catalog/{key+} deletes the object and reconciles its record (which re-indexes a
        # key re-uploaded meanwhile, hence PutObject on index/*)
        # POST /duplicates writes the job under reports/ and sends its slices to DuplicatesQueue
        "SearchFunction": {
            "s3:GetObject": {"catalog/*", "index/*", "queries/*", "reports/*"},
            "s3:DeleteObject": {"catalog/*", "index/*"},
            "s3:PutObject": {"index/*", "reports/*"},
            "sqs:SendMessage": {"${DuplicatesQueue.Arn}"},
            # the stack's ShardFunctions (<stack>-shard-<n>), when sharded
            "lambda:InvokeFunction": {SHARD_FUNCTION_ARNS},
        },
        **{f"ShardFunction{i}": {"s3:GetObject": {"index/*", "catalog/manifest.json"}} for i in range(SHARDS)},
        "DuplicatesFunction": {
            "s3:GetObject": {"catalog/*", "index/*", "reports/*"},
            "s3:PutObject": {"reports/*"},
        },
        # a planned reindex writes its job under reports/reindex/ and sends its slices to
        # ReindexQueue; a planned compaction its job under reports/compact/, its items there too
        "IndexFunction": {
            "s3:GetObject": {"catalog/*", "index/*", "reports/reindex/*", "reports/compact/*"},
            "s3:PutObject": {"index/*", "reports/reindex/*", "reports/compact/*"},
            "s3:DeleteObject": {"index/*"},
            "sqs:SendMessage": {"${ReindexQueue.Arn}"},
        },
        "QueryDropFunction": {
            "s3:GetObject": {"queries/*", "catalog/*", "index/*", "results/*"},
            "s3:PutObject": {"results/*"},
        },
    }
    for lid, fn in _functions(tpl).items():
        granted: dict[str, set] = {}
        for s in _statements(fn):
            assert s["Effect"] == "Allow"
            actions = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
            for a in actions:
                assert "*" not in a, f"{lid}: wildcard action {a}"
                for r in _resource_text(s):
                    if not a.startswith("s3:"):
                        granted.setdefault(a, set()).add(r)
                        continue
                    if a == "s3:ListBucket":
                        assert not r.endswith("/*") and "/" not in r.split("}")[-1], (lid, r)
                        continue
                    prefix = r.split("}/", 1)[1] if "}/" in r else r.rsplit("/", 2)[-2] + "/*"
                    granted.setdefault(a, set()).add(prefix)
        assert granted == allowed[lid], (lid, granted)


def test_auth_switch_and_throttling(tpl):
    assert set(tpl["Parameters"]["AuthMode"]["AllowedValues"]) == {"API_KEY", "AWS_IAM"}
    api = tpl["Resources"]["Api"]["Properties"]
    for path, methods in api["DefinitionBody"]["paths"].items():
        for m, op in methods.items():
            if (path, m) == ("/", "get"):  # the static page is public; it calls /search with auth
                assert op["security"] == []
            else:
                assert op["security"] == {"Fn::If": ["UseIamAuth", [{"sigv4": []}], [{"api_key": []}]]}, (path, m)
            assert "${SearchFunction.Arn}" in op["x-amazon-apigateway-integration"]["uri"]["Fn::Sub"]
    for lid in ("ApiKey", "UsagePlan", "UsagePlanKey"):
        assert tpl["Resources"][lid]["Condition"] == "UseApiKey"
    ms = api["MethodSettings"][0]
    assert ms["ThrottlingRateLimit"] == {"Ref": "ThrottleRateLimit"}
    assert tpl["Resources"]["UsagePlan"]["Properties"]["Throttle"]["RateLimit"] == {"Ref": "ThrottleRateLimit"}
    assert "*~1*" not in api["BinaryMediaTypes"] and "image~1*" in api["BinaryMediaTypes"]
    # every API route in the body is also a function event (permissions, sam local)
    events = {
        (e["Properties"]["Path"], e["Properties"]["Method"])
        for e in tpl["Resources"]["SearchFunction"]["Properties"]["Events"].values()
    }
    assert events == {(p, m) for p, ms_ in api["DefinitionBody"]["paths"].items() for m in ms_}


def test_no_dangling_dependson_and_outputs(tpl):
    res = tpl["Resources"]
    for lid, r in res.items():
        deps = r.get("DependsOn", [])
        for d in [deps] if isinstance(deps, str) else deps:
            assert d in res, f"{lid} DependsOn {d}, which is not a resource"
    assert {"ApiUrl", "BucketName"} <= set(tpl["Outputs"])


def test_samconfig_present():
    text = (REPO / "samconfig.toml").read_text()
    assert "[default.deploy.parameters]" in text and "capabilities" in text


# --------------------------------------------------------------------------- failure handling
def _param_default(tpl, ref) -> Any:
    assert set(ref) == {"Ref"}, ref
    return tpl["Parameters"][ref["Ref"]]["Default"]


def test_reserved_concurrency_per_function_from_parameters(tpl):
    """Each function reserves its concurrency (parameters, 0 = off): a bulk upload (IndexFunction)
    or a flood of dropped queries cannot take the executions SearchFunction needs."""
    reserved = {}
    for lid, fn in _functions(tpl).items():
        if lid.startswith("ShardFunction"):  # invoked once per search: SearchFunction's reservation bounds it
            assert "ReservedConcurrentExecutions" not in fn["Properties"]
            continue
        rce = fn["Properties"]["ReservedConcurrentExecutions"]
        cond, value, off = rce["Fn::If"]
        assert off == {"Ref": "AWS::NoValue"}
        param = value["Ref"]
        assert tpl["Conditions"][cond] == {"Fn::Not": [{"Fn::Equals": [{"Ref": param}, 0]}]}
        assert tpl["Parameters"][param]["MinValue"] == 0
        reserved[lid] = _param_default(tpl, value)
    assert set(reserved) == {"SearchFunction", "IndexFunction", "QueryDropFunction", "DuplicatesFunction"}
    assert all(isinstance(v, int) and v > 0 for v in reserved.values()), reserved
    assert reserved["SearchFunction"] >= reserved["IndexFunction"] + reserved["QueryDropFunction"]


def test_failures_end_in_dead_letter_queues_with_an_alarm(tpl):
    """QueryDropFunction (asynchronous, from S3): retried twice, then its dead-letter queue.
    IndexFunction (from IndexQueue): a message received maxReceiveCount times goes to the queue's
    dead-letter queue. Each dead-letter queue is encrypted and alarmed."""
    res = tpl["Resources"]
    alarms = {
        a["Properties"]["Dimensions"][0]["Value"]["Fn::GetAtt"][0]: a["Properties"]
        for a in res.values()
        if a["Type"] == "AWS::CloudWatch::Alarm"
    }
    props = res["QueryDropFunction"]["Properties"]
    eic = props["EventInvokeConfig"]
    assert eic["MaximumRetryAttempts"] == 2
    assert _param_default(tpl, eic["MaximumEventAgeInSeconds"]) == 21600  # Lambda's maximum
    assert props["DeadLetterQueue"]["Type"] == "SQS"
    dead_letter_queues = [
        props["DeadLetterQueue"]["TargetArn"]["Fn::GetAtt"][0],
        res["IndexQueue"]["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0],
        res["DuplicatesQueue"]["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0],
        res["ReindexQueue"]["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0],
    ]
    for queue in dead_letter_queues:
        assert res[queue]["Type"] == "AWS::SQS::Queue" and res[queue]["Properties"]["SqsManagedSseEnabled"] is True
        alarm = alarms.pop(queue)
        assert (alarm["Namespace"], alarm["MetricName"]) == ("AWS/SQS", "ApproximateNumberOfMessagesVisible")
        assert alarm["Dimensions"][0]["Name"] == "QueueName"
        assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (0, "GreaterThanThreshold")
        assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}]
    assert alarms == {}
    assert res["AlarmTopic"]["Type"] == "AWS::SNS::Topic"


def test_index_function_knows_its_bucket_for_reindex(tpl):
    """{"action": "reindex"} without a bucket uses HARMONY_BUCKET: the bucket's own name (a !Ref
    would be circular: the bucket's notifications name the function)."""
    env = tpl["Resources"]["IndexFunction"]["Properties"]["Environment"]["Variables"]
    assert env["HARMONY_BUCKET"] == tpl["Resources"]["CatalogBucket"]["Properties"]["BucketName"]


def test_api_access_logs(tpl):
    res = tpl["Resources"]
    setting = res["Api"]["Properties"]["AccessLogSetting"]
    group = setting["DestinationArn"]["Fn::GetAtt"]
    assert group[1] == "Arn" and res[group[0]]["Type"] == "AWS::Logs::LogGroup"
    assert res[group[0]]["Properties"]["RetentionInDays"] == {"Ref": "AccessLogRetentionDays"}
    assert "$context.requestId" in setting["Format"]  # API Gateway requires it
    assert set(json.loads(setting["Format"])) >= {"requestId", "ip", "status", "path"}  # one JSON object a line
    # the account-wide CloudWatch role API Gateway logs with, made before the stage when created here
    assert res["Api"]["DependsOn"] == "ApiLogsRoleReady"
    assert res["ApiLogsRoleReady"]["Metadata"]["AccountSettings"]["Fn::If"][1] == {"Ref": "ApiGatewayAccountSettings"}
    assert res["ApiGatewayAccountSettings"]["Condition"] == "CreateApiLogsRole"


CHECKOV = os.environ.get("HARMONY_CHECKOV") or str(REPO / ".tools" / "checkov" / "bin" / "checkov")


def _checkov(path: Path) -> dict:
    """checkov's report on the template at ``path``, with its Fn::ForEach expanded (checkov does
    not expand it: it would not see the ShardFunctions)."""
    if not Path(CHECKOV).exists():
        pytest.skip(f"checkov is not installed at {CHECKOV} (.ci/run installs it from requirements/checkov.lock)")
    expanded = path.with_name(path.stem + ".expanded.json")
    expanded.write_text(json.dumps(expand_language_extensions(load_yaml(path), {"ShardIds": SHARD_IDS})))
    r = subprocess.run(
        [CHECKOV, "-f", str(expanded), "--framework", "cloudformation", "--skip-download", "--output", "json"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert r.stdout.strip(), r.stderr
    return json.loads(r.stdout)


def test_checkov_has_no_finding_left_and_every_waiver_says_why(tmp_path):
    copy = tmp_path / "template.yaml"
    copy.write_text(TEMPLATE.read_text())
    report = _checkov(copy)
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert failed == [], failed
    checked = {c["resource"] for kind in ("passed_checks", "skipped_checks") for c in report["results"][kind]}
    assert {f"AWS::Serverless::Function.ShardFunction{i}" for i in range(SHARDS)} <= checked, checked
    skipped = report["results"]["skipped_checks"]
    assert skipped, "no waiver at all: the test below would not show checkov reads them"
    for c in skipped:
        assert len(c["check_result"].get("suppress_comment") or "") > 30, c["check_id"]


def test_checkov_finds_what_a_waiver_hides(tmp_path):
    """The test above can fail: without the waivers, checkov reports their findings."""
    bad = tmp_path / "template.yaml"
    text = TEMPLATE.read_text()
    assert text.count("      checkov:\n        skip:\n") >= 5
    bad.write_text(text.replace("      checkov:\n        skip:\n", "      not_checkov:\n        skip:\n"))
    failed = {c["check_id"] for c in _checkov(bad)["results"]["failed_checks"]}
    assert {"CKV_AWS_117", "CKV_AWS_116", "CKV_AWS_27", "CKV_AWS_18"} <= failed, failed


def test_compaction_runs_hourly_and_shards_get_a_function_each(raw, tpl):
    """IndexFunction compacts on a schedule into as many shards as ShardIds lists; each shard has
    its own ShardFunction (made by Fn::ForEach, only when ShardIds is more than "0") that reads
    only index/ and the URL manifest, and SearchFunction may invoke exactly the stack's shards."""
    assert raw["Transform"][0] == "AWS::LanguageExtensions"  # before the SAM transform, as it must be
    assert raw["Parameters"]["ShardIds"]["Type"] == "CommaDelimitedList"
    assert raw["Parameters"]["ShardIds"]["Default"] == "0"
    (loop,) = (k for k in raw["Resources"] if k.startswith("Fn::ForEach::"))
    assert raw["Resources"][loop][:2] == ["ShardId", {"Ref": "ShardIds"}]
    res = tpl["Resources"]
    index = res["IndexFunction"]["Properties"]
    schedule = index["Events"]["Compaction"]["Properties"]
    assert json.loads(schedule["Input"]) == {"action": "compact"} and schedule["Schedule"].startswith("rate(")
    shard_fns = sorted(n for n in res if n.startswith("ShardFunction"))
    assert shard_fns == [f"ShardFunction{i}" for i in range(SHARDS)]
    for i, name in enumerate(shard_fns):
        fn = res[name]
        assert fn["Condition"] == "Sharded"
        props = fn["Properties"]
        assert props["FunctionName"] == {"Fn::Sub": f"${{AWS::StackName}}-shard-{i}"}
        (stmt,) = props["Policies"]
        actions = {s["Action"] for s in stmt["Statement"]}
        assert actions == {"s3:GetObject", "s3:ListBucket"}  # read-only
    # resolved as deployed (the local stack's reader): the numbers and names agree
    for shard_ids, shards in ((SHARD_IDS, SHARDS), ("0", 1)):
        local = load_template(TEMPLATE, parameter_overrides={"ShardIds": shard_ids})
        env = local.functions["SearchFunction"].environment
        assert local.functions["IndexFunction"].environment["HARMONY_SHARDS"] == str(shards)
        settings = Settings.from_env({k: v for k, v in env.items() if k.startswith("HARMONY_")})
        names = [local.functions[f"ShardFunction{i}"].function_name for i in range(shards)] if shards > 1 else []
        assert list(settings.shard_functions) == names, (settings.shard_functions, names)
        for i in range(shards if shards > 1 else 0):
            assert local.functions[f"ShardFunction{i}"].environment["HARMONY_SHARD"] == f"{i}/{shards}"
            assert fnmatch.fnmatchcase(
                f"arn:aws:lambda:us-east-1:123456789012:function:{names[i]}", _arn(SHARD_FUNCTION_ARNS)
            )
        assert not any(name.startswith("ShardFunction") for name in local.functions) or shards > 1
    others = ("SearchFunction", "IndexFunction", "DuplicatesFunction", "QueryDropFunction")
    assert not any(
        fnmatch.fnmatchcase(
            f"arn:aws:lambda:us-east-1:123456789012:function:harmony-local-{o}", _arn(SHARD_FUNCTION_ARNS)
        )
        for o in others
    )


def _arn(pattern: str) -> str:
    """An ARN pattern of the template, as the local stack's reader resolves its pseudo parameters."""
    return (
        pattern.replace("${AWS::Partition}", "aws")
        .replace("${AWS::Region}", "us-east-1")
        .replace("${AWS::AccountId}", "123456789012")
        .replace("${AWS::StackName}", "harmony-local")
    )
