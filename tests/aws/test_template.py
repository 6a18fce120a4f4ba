"""template.yaml: `sam validate --lint` and cfn-lint pass, and the properties that matter hold
(runtime, private bucket, prefix-filtered triggers with no loop, least-privilege IAM, auth switch)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harmony_local.stack.template import load_template, load_yaml
from tests.support import REPO, TEMPLATE

SAM = os.environ.get("HARMONY_SAM") or str(REPO / ".tools" / "sam" / "bin" / "sam")


@pytest.fixture(scope="module")
def tpl() -> dict:
    """The template as written (intrinsics unresolved)."""
    return load_yaml(TEMPLATE)


def _env():
    return {**os.environ, "AWS_DEFAULT_REGION": "us-east-1", "SAM_CLI_TELEMETRY": "0"}


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
    triggers: dict[str, set[tuple[str, str]]] = {}
    for lid, fn in _functions(tpl).items():
        for ev in (fn["Properties"].get("Events") or {}).values():
            if ev["Type"] == "S3":
                assert ev["Properties"]["Bucket"] == {"Ref": "CatalogBucket"}
                rules = ev["Properties"]["Filter"]["S3Key"]["Rules"]
                prefix = next(r["Value"] for r in rules if r["Name"] == "prefix")
                triggers.setdefault(lid, set()).add((ev["Properties"]["Events"], prefix))
    assert triggers == {
        "IndexFunction": {("s3:ObjectCreated:*", "catalog/"), ("s3:ObjectRemoved:*", "catalog/")},
        "QueryDropFunction": {("s3:ObjectCreated:*", "queries/")},
    }


def _statements(fn):
    out = []
    for pol in fn["Properties"].get("Policies", []):
        out += pol.get("Statement", [])
    return out


def _resource_text(stmt) -> list[str]:
    res = stmt["Resource"] if isinstance(stmt["Resource"], list) else [stmt["Resource"]]
    texts = []
    for r in res:
        if isinstance(r, dict) and "Fn::Sub" in r:
            texts.append(r["Fn::Sub"])
        elif isinstance(r, dict) and "Fn::GetAtt" in r:
            texts.append("${{{}.Arn}}".format(r["Fn::GetAtt"][0]))
        else:
            texts.append(str(r))
    return texts


def test_least_privilege(tpl):
    allowed = {
        "SearchFunction": {"s3:GetObject": {"catalog/*", "index/*", "queries/*"}},
        "IndexFunction": {
            "s3:GetObject": {"catalog/*", "index/*"},
            "s3:PutObject": {"index/*"},
            "s3:DeleteObject": {"index/*"},
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
