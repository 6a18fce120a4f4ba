"""template.yaml -> what a local stack needs: functions, their code, layers, environment, API
routes and S3 triggers, the way ``sam local start-api`` reads them; and SQS queues (visibility
timeout, redrive policy), the buckets' notifications to them and the functions' SQS event sources
(batch size, window, MaximumConcurrency, partial batch responses).

Only the parts of CloudFormation that those fields use are evaluated: Ref (parameters, pseudo
parameters, resources), Fn::Sub, Fn::Join, Fn::If with Conditions, Fn::Select, Fn::Split,
Fn::GetAtt (bucket Arn/name, queue Arn/QueueName; anything else becomes a placeholder string), and
of AWS::LanguageExtensions Fn::ForEach (expanded first, as CloudFormation does) and Fn::Length. A
bucket resource (AWS::S3::Bucket) stands for the local bucket, whatever its deployed name would be;
a queue's ARN ends with its logical id; a function's !Ref is its FunctionName where it has one.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import yaml

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"
STACK_NAME = "harmony-local"
NO_VALUE = object()
QUEUE_ARN_PREFIX = f"arn:aws:sqs:{REGION}:{ACCOUNT_ID}:"  # + the queue's logical id


class TemplateError(Exception):
    pass


# --------------------------------------------------------------------------- YAML with !Tags
class _Loader(yaml.SafeLoader):
    pass


def _tag(loader: yaml.Loader, suffix: str, node: yaml.Node) -> dict:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    if suffix == "Condition":
        return {"Condition": value}
    return {f"Fn::{suffix}": value}


_Loader.add_multi_constructor("!", _tag)


def load_yaml(path: Path) -> dict:
    with open(path, encoding="utf-8") as fh:
        doc = yaml.load(fh, Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    if not isinstance(doc, dict) or "Resources" not in doc:
        raise TemplateError(f"{path} is not a CloudFormation/SAM template (no Resources)")
    return doc


# --------------------------------------------------------------------------- model
@dataclass(frozen=True)
class ApiRoute:
    function: str
    method: str  # upper case, or ANY
    path: str  # as in the template, e.g. /search, /items/{id}, /{proxy+}
    rest_api: str | None = None

    def match(self, method: str, path: str) -> dict[str, str] | None:
        """Path parameters when ``method path`` is this route, else None."""
        if self.method not in ("ANY", method.upper()):
            return None
        return match_path(self.path, path)


def s3_filter_matches(events: tuple[str, ...], rules: tuple[tuple[str, str], ...], event_name: str, key: str) -> bool:
    """Would S3 deliver ``event_name`` (e.g. ObjectCreated:Put) for ``key`` to a notification of
    these ``events`` (patterns, e.g. s3:ObjectCreated:*) and S3Key ``rules``?"""
    full = event_name if event_name.startswith("s3:") else "s3:" + event_name
    if not any(fnmatch.fnmatchcase(full, pattern) for pattern in events):
        return False
    for kind, value in rules:
        if kind == "prefix" and not key.startswith(value):
            return False
        if kind == "suffix" and not key.endswith(value):
            return False
    return True


@dataclass(frozen=True)
class S3Trigger:
    function: str
    name: str  # the event's name in the template
    bucket: str  # logical id of the bucket resource
    events: tuple[str, ...]  # e.g. s3:ObjectCreated:*
    rules: tuple[tuple[str, str], ...] = ()  # (prefix|suffix, value)

    def matches(self, event_name: str, key: str) -> bool:
        """Would S3 deliver ``event_name`` (e.g. ObjectCreated:Put) for ``key`` to this trigger?"""
        return s3_filter_matches(self.events, self.rules, event_name, key)


@dataclass(frozen=True)
class QueueSpec:
    """An AWS::SQS::Queue: what a local queue needs to behave like it."""

    name: str  # logical id
    visibility_timeout: float = 30.0  # seconds (SQS's default)
    dead_letter: str | None = None  # logical id of the RedrivePolicy's deadLetterTargetArn
    max_receive_count: int | None = None


@dataclass(frozen=True)
class QueueNotification:
    """One of a bucket's NotificationConfiguration.QueueConfigurations."""

    bucket: str  # logical id of the bucket resource
    queue: str  # logical id of the queue
    events: tuple[str, ...]
    rules: tuple[tuple[str, str], ...] = ()

    def matches(self, event_name: str, key: str) -> bool:
        return s3_filter_matches(self.events, self.rules, event_name, key)


@dataclass(frozen=True)
class SqsTrigger:
    """A function's ``Type: SQS`` event (an event source mapping)."""

    function: str
    name: str
    queue: str  # logical id
    batch_size: int = 10
    batching_window: float = 0.0  # MaximumBatchingWindowInSeconds
    max_concurrency: int | None = None  # ScalingConfig.MaximumConcurrency (None: no cap of its own)
    report_batch_item_failures: bool = False


@dataclass
class FunctionSpec:
    name: str  # logical id
    handler: str
    code_uri: Path
    runtime: str = "python3.12"
    timeout: float = 3.0
    memory: int = 128
    architecture: str = "x86_64"
    environment: dict[str, str] = field(default_factory=dict)
    layers: list[Path] = field(default_factory=list)
    project_root: Path | None = None  # the template's folder: a local run sees none of it but code and layers
    routes: list[ApiRoute] = field(default_factory=list)
    s3_triggers: list[S3Trigger] = field(default_factory=list)
    sqs_triggers: list[SqsTrigger] = field(default_factory=list)
    function_name: str | None = None  # FunctionName, where the template sets one

    def python_path(self) -> list[str]:
        """sys.path entries like Lambda's: /var/task (the code), then each layer's /opt/python."""
        out = [str(self.code_uri)]
        for layer in self.layers:
            for candidate in (layer / "python", layer):
                if candidate.is_dir() and str(candidate) not in out:
                    out.append(str(candidate))
        return out


@dataclass(frozen=True)
class LayerSpec:
    name: str  # logical id
    content_uri: Path  # what a local run puts on sys.path (its python/ folder if it has one)
    build_dir: Path  # where `sam build` finds the layer's Makefile (Metadata ContextPath, else ContentUri)
    build_method: str | None = None  # Metadata BuildMethod (e.g. makefile)


@dataclass
class RestApi:
    name: str | None  # logical id, None for SAM's implicit ServerlessRestApi
    stage: str = "Prod"
    binary_media_types: tuple[str, ...] = ()


@dataclass
class Template:
    path: Path
    functions: dict[str, FunctionSpec]
    layers: dict[str, LayerSpec]
    buckets: list[str]  # logical ids of AWS::S3::Bucket resources
    apis: dict[str | None, RestApi]
    parameters: dict[str, str]
    queues: dict[str, QueueSpec] = field(default_factory=dict)
    queue_notifications: list[QueueNotification] = field(default_factory=list)

    @property
    def routes(self) -> list[ApiRoute]:
        return [r for f in self.functions.values() for r in f.routes]

    @property
    def s3_triggers(self) -> list[S3Trigger]:
        return [t for f in self.functions.values() for t in f.s3_triggers]

    @property
    def sqs_triggers(self) -> list[SqsTrigger]:
        return [t for f in self.functions.values() for t in f.sqs_triggers]

    def delivers(self, function: str, event: dict[str, Any]) -> bool:
        """Would the template deliver ``event`` to ``function``: an S3 event by one of its S3
        events, or an SQS batch from a queue it reads (the queue's logical id is a part of the
        queue name in ``eventSourceARN``, as CloudFormation names queues)? When a bucket sends
        notifications to that queue, its messages must be ones it sends (S3 events its filters
        let through, or S3's test message); any message can come from a queue no bucket feeds."""
        fn = self.functions[function]
        records = event.get("Records") if isinstance(event, dict) else None
        if not isinstance(records, list) or not records:
            return False
        if all(r.get("eventSource") == "aws:s3" for r in records):
            return any(
                all(t.matches(r["eventName"], unquote_plus(r["s3"]["object"]["key"])) for r in records)
                for t in fn.s3_triggers
            )
        if not all(r.get("eventSource") == "aws:sqs" for r in records):
            return False
        for trig in fn.sqs_triggers:
            notes = [n for n in self.queue_notifications if n.queue == trig.queue]
            ok = True
            for msg in records:
                if trig.queue not in str(msg.get("eventSourceARN", "")).rsplit(":", 1)[-1].split("-"):
                    ok = False
                    break
                if not notes:
                    continue
                body = json.loads(msg.get("body") or "null")
                if isinstance(body, dict) and body.get("Event") == "s3:TestEvent":
                    continue
                s3_records = body.get("Records") if isinstance(body, dict) else None
                if not s3_records or not all(
                    any(n.matches(r["eventName"], unquote_plus(r["s3"]["object"]["key"])) for n in notes)
                    for r in s3_records
                ):
                    ok = False
                    break
            if ok:
                return True
        return False

    def function_named(self, name: str) -> str | None:
        """The logical id of the function Lambda's Invoke API knows as ``name``: its FunctionName,
        its logical id (as ``sam local`` also accepts) or its ``!Ref`` here (``<id>-local``), or
        an ARN ending in one of them."""
        name = name.rsplit(":function:", 1)[-1]
        for fn in self.functions.values():
            if name in (fn.function_name, fn.name, f"{fn.name}-local"):
                return fn.name
        return None

    def route_for(self, method: str, path: str) -> tuple[ApiRoute, dict[str, str]] | None:
        """The route API Gateway would pick: exact paths before parameterised ones, a method before ANY."""
        candidates = []
        for r in self.routes:
            params = r.match(method, path)
            if params is not None:
                greedy = "+}" in r.path
                candidates.append(((greedy, len(params), r.method == "ANY", -len(r.path)), r, params))
        if not candidates:
            return None
        candidates.sort(key=lambda c: c[0])
        return candidates[0][1], candidates[0][2]

    def api_of(self, route: ApiRoute) -> RestApi:
        return self.apis.get(route.rest_api) or self.apis[None]

    def has_path(self, path: str) -> bool:
        return any(match_path(r.path, path) is not None for r in self.routes)


def match_path(template_path: str, path: str) -> dict[str, str] | None:
    regex, names = "", []
    for part in re.split(r"(\{[^}]+\})", template_path):
        if part.startswith("{") and part.endswith("}"):
            name = part[1:-1]
            if name.endswith("+"):
                names.append(name[:-1])
                regex += "(.+)"
            else:
                names.append(name)
                regex += "([^/]+)"
        else:
            regex += re.escape(part)
    m = re.fullmatch(regex, path) or (re.fullmatch(regex, path.rstrip("/")) if path != "/" else None)
    if m is None:
        return None
    return dict(zip(names, m.groups(), strict=False))


def media_type_matches(content_type: str | None, patterns: tuple[str, ...]) -> bool:
    """API Gateway's BinaryMediaTypes test (``~1`` is the template's escaped ``/``)."""
    if not content_type:
        return False
    ctype = content_type.split(";")[0].strip().lower()
    for pattern in patterns:
        p = pattern.replace("~1", "/").lower()
        if p == "*/*" or fnmatch.fnmatchcase(ctype, p):
            return True
    return False


# --------------------------------------------------------------------------- language extensions
_FOREACH = "Fn::ForEach::"


def _list_parameter(doc: dict, name: str) -> bool:
    ptype = str(((doc.get("Parameters") or {}).get(name) or {}).get("Type", ""))
    return ptype == "CommaDelimitedList" or ptype.startswith("List<")


def _substitute(v: Any, identifier: str, item: str) -> Any:
    """``fragment`` with ``${identifier}``/``&{identifier}`` in keys and strings, and
    ``{"Ref": identifier}``, replaced by ``item`` (what Fn::ForEach does to its fragment)."""
    if isinstance(v, str):
        return v.replace("${" + identifier + "}", item).replace("&{" + identifier + "}", item)
    if isinstance(v, list):
        return [_substitute(x, identifier, item) for x in v]
    if isinstance(v, dict):
        if v == {"Ref": identifier}:
            return item
        return {_substitute(k, identifier, item): _substitute(x, identifier, item) for k, x in v.items()}
    return v


def expand_language_extensions(doc: dict, parameters: dict[str, str]) -> dict:
    """``doc`` with every ``Fn::ForEach::<loop>`` (in Conditions, Resources, Outputs and within
    properties) expanded over its collection: a list, or a ``!Ref`` to a list parameter, whose
    value is taken from ``parameters`` (comma-separated, as CloudFormation passes it)."""

    def collection(spec: Any, where: str) -> list[str]:
        if isinstance(spec, list):
            return [str(x) for x in spec]
        if isinstance(spec, dict) and set(spec) == {"Ref"} and _list_parameter(doc, spec["Ref"]):
            return [x.strip() for x in parameters.get(spec["Ref"], "").split(",") if x.strip()]
        raise TemplateError(f"{where}: a collection must be a list or a !Ref to a list parameter, not {spec!r}")

    def expand(v: Any, where: str) -> Any:
        if isinstance(v, list):
            return [expand(x, where) for x in v]
        if not isinstance(v, dict):
            return v
        out: dict = {}
        for k, x in v.items():
            if not (isinstance(k, str) and k.startswith(_FOREACH)):
                out[k] = expand(x, f"{where}/{k}")
                continue
            if not (isinstance(x, list) and len(x) == 3 and isinstance(x[0], str) and isinstance(x[2], dict)):
                raise TemplateError(f"{where}/{k}: Fn::ForEach takes [identifier, collection, fragment]")
            identifier, items, fragment = x[0], collection(x[1], f"{where}/{k}"), x[2]
            for item in items:
                for key, value in expand(_substitute(fragment, identifier, item), f"{where}/{k}").items():
                    if key in out:
                        raise TemplateError(f"{where}/{k}: {key} is made twice")
                    out[key] = value
        return out

    return {k: expand(v, k) if k in ("Conditions", "Resources", "Outputs") else v for k, v in doc.items()}


# --------------------------------------------------------------------------- intrinsics
class _Resolver:
    def __init__(self, doc: dict, parameters: dict[str, str], bucket_name: str) -> None:
        self.doc = doc
        self.resources = doc.get("Resources") or {}
        self.params = parameters
        self.bucket_name = bucket_name
        self.bucket_names: set[str] = set()
        self.conditions: dict[str, bool] = {}
        for name, expr in (doc.get("Conditions") or {}).items():
            self.conditions[name] = bool(self.resolve(expr))
        # A bucket's deployed name, where the template spells it out (a function's environment
        # cannot !Ref a bucket whose notifications point back at the function), stands for the
        # local bucket too.
        for res in self.resources.values():
            if res.get("Type") == "AWS::S3::Bucket":
                deployed = self.resolve((res.get("Properties") or {}).get("BucketName"))
                if isinstance(deployed, str) and deployed:
                    self.bucket_names.add(deployed)

    def ref(self, name: str) -> Any:
        pseudo = {
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT_ID,
            "AWS::StackName": STACK_NAME,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::NoValue": NO_VALUE,
            "AWS::StackId": f"arn:aws:cloudformation:{REGION}:{ACCOUNT_ID}:stack/{STACK_NAME}/local",
            "AWS::NotificationARNs": [],
        }
        if name in pseudo:
            return pseudo[name]
        if name in self.params:
            value = self.params[name]
            return [x.strip() for x in value.split(",")] if _list_parameter(self.doc, name) else value
        res = self.resources.get(name)
        if res is not None and res.get("Type") == "AWS::S3::Bucket":
            return self.bucket_name
        function_name = ((res or {}).get("Properties") or {}).get("FunctionName")
        if function_name is not None:
            return self.resolve(function_name)
        return f"{name}-local"

    def getatt(self, name: str, attr: str) -> str:
        res = self.resources.get(name) or {}
        if res.get("Type") == "AWS::S3::Bucket":
            if attr == "Arn":
                return f"arn:aws:s3:::{self.bucket_name}"
            if attr in ("DomainName", "RegionalDomainName"):
                return f"{self.bucket_name}.s3.amazonaws.com"
        if res.get("Type") == "AWS::SQS::Queue":
            if attr == "Arn":
                return f"{QUEUE_ARN_PREFIX}{name}"
            if attr == "QueueName":
                return name
        return f"{name}.{attr}-local"

    def resolve(self, v: Any) -> Any:
        if isinstance(v, list):
            return [x for x in (self.resolve(i) for i in v) if x is not NO_VALUE]
        if not isinstance(v, dict):
            return v
        if len(v) == 1:
            ((k, arg),) = v.items()
            if k == "Ref":
                return self.ref(arg)
            if k == "Condition":
                return self.conditions.get(arg, False)
            if k == "Fn::GetAtt":
                parts = arg if isinstance(arg, list) else str(arg).split(".", 1)
                return self.getatt(parts[0], parts[1] if len(parts) > 1 else "")
            if k == "Fn::Sub":
                text, extra = (arg, {}) if isinstance(arg, str) else (arg[0], self.resolve(arg[1]))

                def sub(m: re.Match) -> str:
                    ref = m.group(1)
                    if ref.startswith("!"):
                        return "${" + ref[1:] + "}"
                    if ref in extra:
                        return str(extra[ref])
                    if "." in ref and not ref.startswith("AWS::"):
                        return str(self.getatt(*ref.split(".", 1)))
                    return str(self.ref(ref))

                text = re.sub(r"\$\{([^}]+)\}", sub, text)
                return self.bucket_name if text in self.bucket_names else text
            if k == "Fn::Join":
                sep, items = arg
                return sep.join(str(x) for x in self.resolve(items))
            if k == "Fn::Length":
                return len(self.resolve(arg))
            if k == "Fn::Select":
                idx, items = self.resolve(arg)
                return items[int(idx)]
            if k == "Fn::Split":
                sep, text = self.resolve(arg)
                return text.split(sep)
            if k == "Fn::If":
                cond, yes, no = arg
                return self.resolve(yes if self.conditions.get(cond, False) else no)
            if k == "Fn::Equals":
                a, b = self.resolve(arg)
                return str(a) == str(b)
            if k == "Fn::Not":
                return not self.resolve(arg[0])
            if k == "Fn::And":
                return all(self.resolve(x) for x in arg)
            if k == "Fn::Or":
                return any(self.resolve(x) for x in arg)
            if k.startswith("Fn::"):
                return f"<{k} unsupported locally>"
        return {k: r for k, r in ((k, self.resolve(x)) for k, x in v.items()) if r is not NO_VALUE}


# --------------------------------------------------------------------------- reading
def _as_str(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _queue_id(arn: Any, queues: dict[str, Any]) -> str | None:
    """The logical id of the queue whose (resolved) ARN is ``arn``."""
    if isinstance(arn, str) and arn.startswith(QUEUE_ARN_PREFIX) and arn[len(QUEUE_ARN_PREFIX) :] in queues:
        return arn[len(QUEUE_ARN_PREFIX) :]
    return None


def _s3_rules(filt: Any) -> tuple[tuple[str, str], ...]:
    rules = (((filt or {}).get("S3Key") or {}).get("Rules")) or []
    return tuple((str(r.get("Name", "")).lower(), str(r.get("Value", ""))) for r in rules)


def _merge_env(*envs: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for env in envs:
        variables = ((env or {}).get("Variables") or {}) if isinstance(env, dict) else {}
        out.update({k: _as_str(v) for k, v in variables.items()})
    return out


def load_template(
    path: str | Path, *, bucket_name: str = "harmony-local", parameter_overrides: dict[str, str] | None = None
) -> Template:
    """The template at ``path``; relative CodeUri/ContentUri paths are relative to its folder."""
    path = Path(path).resolve()
    return template_from_doc(
        load_yaml(path), base=path.parent, path=path, bucket_name=bucket_name, parameter_overrides=parameter_overrides
    )


def template_from_doc(
    doc: dict,
    *,
    base: Path,
    path: Path | None = None,
    bucket_name: str = "harmony-local",
    parameter_overrides: dict[str, str] | None = None,
) -> Template:
    """A template already parsed (``load_yaml``, or a test's modified copy); paths relative to ``base``."""
    path = path or base / "template.yaml"
    params = {
        name: ",".join(map(_as_str, d)) if isinstance(d, list) else _as_str(d)
        for name, d in ((name, p.get("Default", "")) for name, p in (doc.get("Parameters") or {}).items())
    }
    params.update(parameter_overrides or {})
    doc = expand_language_extensions(doc, params)
    r = _Resolver(doc, params, bucket_name)
    resources = {  # a resource whose Condition is false is not created
        name: res
        for name, res in (doc.get("Resources") or {}).items()
        if "Condition" not in res or r.conditions.get(res["Condition"], False)
    }
    glob_fn = r.resolve((doc.get("Globals") or {}).get("Function") or {})
    glob_api = r.resolve((doc.get("Globals") or {}).get("Api") or {})

    apis: dict[str | None, RestApi] = {
        None: RestApi(None, stage="Prod", binary_media_types=tuple(glob_api.get("BinaryMediaTypes") or ()))
    }
    buckets: list[str] = []
    layers: dict[str, LayerSpec] = {}
    queue_ids = {name for name, res in resources.items() if res.get("Type") == "AWS::SQS::Queue"}
    queues: dict[str, QueueSpec] = {}
    notifications: list[QueueNotification] = []
    for name, res in resources.items():
        rtype = res.get("Type")
        props = r.resolve(res.get("Properties") or {})
        if rtype == "AWS::S3::Bucket":
            buckets.append(name)
            for qc in (props.get("NotificationConfiguration") or {}).get("QueueConfigurations") or []:
                queue = _queue_id(qc.get("Queue"), dict.fromkeys(queue_ids))
                if queue is None:
                    raise TemplateError(
                        f"{name}: a QueueConfiguration names no queue of the template ({qc.get('Queue')})"
                    )
                notifications.append(
                    QueueNotification(name, queue, (str(qc.get("Event")),), _s3_rules(qc.get("Filter")))
                )
        elif rtype == "AWS::SQS::Queue":
            redrive = props.get("RedrivePolicy") or {}
            if isinstance(redrive, str):
                redrive = json.loads(redrive)
            queues[name] = QueueSpec(
                name,
                visibility_timeout=float(props.get("VisibilityTimeout", 30)),
                dead_letter=_queue_id(redrive.get("deadLetterTargetArn"), dict.fromkeys(queue_ids)),
                max_receive_count=int(redrive["maxReceiveCount"]) if "maxReceiveCount" in redrive else None,
            )
        elif rtype == "AWS::Serverless::Api":
            bmt = tuple(glob_api.get("BinaryMediaTypes") or ()) + tuple(props.get("BinaryMediaTypes") or ())
            apis[name] = RestApi(
                name, stage=str(props.get("StageName") or glob_api.get("StageName") or "Prod"), binary_media_types=bmt
            )
        elif rtype in ("AWS::Serverless::LayerVersion", "AWS::Lambda::LayerVersion"):
            uri = props.get("ContentUri" if rtype == "AWS::Serverless::LayerVersion" else "Content")
            if isinstance(uri, str):
                meta = res.get("Metadata") or {}
                content = (base / uri).resolve()
                if not content.is_dir():
                    raise TemplateError(f"{name}: ContentUri {uri} is not a folder ({content})")
                context = meta.get("ContextPath")
                layers[name] = LayerSpec(
                    name, content, (base / context).resolve() if context else content, meta.get("BuildMethod")
                )

    functions: dict[str, FunctionSpec] = {}
    for name, res in resources.items():
        if res.get("Type") != "AWS::Serverless::Function":
            continue
        props = r.resolve(res.get("Properties") or {})
        merged = {**glob_fn, **props}
        handler, code_uri = merged.get("Handler"), merged.get("CodeUri")
        if not isinstance(handler, str) or not isinstance(code_uri, str):
            raise TemplateError(f"{name}: Handler and CodeUri (a local folder) are required locally")
        code = (base / code_uri).resolve()
        if not code.is_dir():
            raise TemplateError(f"{name}: CodeUri {code_uri} is not a folder ({code})")
        fn_layers: list[Path] = []
        for ref in list(glob_fn.get("Layers") or []) + list(props.get("Layers") or []):
            # a resolved !Ref of a layer gives "<Name>-local"; map it back to the layer's folder
            lname = ref[: -len("-local")] if isinstance(ref, str) and ref.endswith("-local") else ref
            if lname in layers:
                fn_layers.append(layers[lname].content_uri)
        arch = (merged.get("Architectures") or ["x86_64"])[0]
        spec = FunctionSpec(
            name=name,
            handler=handler,
            code_uri=code,
            runtime=str(merged.get("Runtime") or "python3.12"),
            timeout=float(merged.get("Timeout") or 3),
            memory=int(merged.get("MemorySize") or 128),
            architecture=str(arch),
            environment=_merge_env(glob_fn.get("Environment"), props.get("Environment")),
            layers=fn_layers,
            project_root=base.resolve(),
            function_name=str(props["FunctionName"]) if props.get("FunctionName") else None,
        )
        for ev_name, ev in (props.get("Events") or {}).items():
            etype, ep = ev.get("Type"), ev.get("Properties") or {}
            if etype == "Api":
                api_ref = ep.get("RestApiId")
                api_name = (
                    api_ref[: -len("-local")] if isinstance(api_ref, str) and api_ref.endswith("-local") else api_ref
                )
                spec.routes.append(ApiRoute(name, str(ep.get("Method", "ANY")).upper(), str(ep["Path"]), api_name))
            elif etype == "S3":
                bucket_ref = (
                    (res.get("Properties") or {}).get("Events", {}).get(ev_name, {}).get("Properties", {}).get("Bucket")
                )
                bucket_id = bucket_ref.get("Ref") if isinstance(bucket_ref, dict) else None
                events = ep.get("Events")
                events = [events] if isinstance(events, str) else list(events or [])
                rules = _s3_rules(ep.get("Filter"))
                spec.s3_triggers.append(S3Trigger(name, ev_name, bucket_id or "", tuple(events), rules))
            elif etype == "SQS":
                queue = _queue_id(ep.get("Queue"), queues)
                if queue is None:
                    raise TemplateError(f"{name}.{ev_name}: Queue names no queue of the template ({ep.get('Queue')})")
                cap = (ep.get("ScalingConfig") or {}).get("MaximumConcurrency")
                spec.sqs_triggers.append(
                    SqsTrigger(
                        name,
                        ev_name,
                        queue,
                        batch_size=int(ep.get("BatchSize", 10)),
                        batching_window=float(ep.get("MaximumBatchingWindowInSeconds", 0)),
                        max_concurrency=int(cap) if cap is not None else None,
                        report_batch_item_failures="ReportBatchItemFailures" in (ep.get("FunctionResponseTypes") or []),
                    )
                )
        functions[name] = spec
    if not functions:
        raise TemplateError(f"{path} has no AWS::Serverless::Function")
    return Template(
        path=path,
        functions=functions,
        layers=layers,
        buckets=buckets,
        apis=apis,
        parameters=params,
        queues=queues,
        queue_notifications=notifications,
    )
