"""`python -m harmony_local import DIR` / `harmony import DIR --stack`, `status` and `redrive` on a
running local stack (the repository's template: uploads go through IndexQueue).

The folder holds small real images, a text file, a truncated JPEG and a hidden folder (left
out): the final line counts indexed / skipped as not images / failed, progress goes to stderr;
status shows the queues; a dead letter is redriven and indexed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from harmony_aws.layout import record_key
from harmony_local import cli as harmony_cli
from harmony_local.importer import queue_depth, wait_drained
from harmony_local.stack import cli as stack_cli
from tests.support import FIXTURES, SAMPLES, TEMPLATE, all_keys, s3_event, start_stack


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bulk-cli")
    stack = start_stack(TEMPLATE, workdir, bucket="harmony-bulk-cli", queue_visibility_timeout=1)
    stack_cli.write_state(stack, workdir)
    try:
        yield stack, workdir
    finally:
        stack_cli._shutdown(stack, workdir)


def small_jpeg(path: Path, width: int = 96) -> bytes:
    img = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    img = cv2.resize(img, (width, width * img.shape[0] // img.shape[1]), interpolation=cv2.INTER_AREA)
    return bytes(cv2.imencode(".jpg", img)[1].tobytes())


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("photos")
    sources = sorted((SAMPLES / "catalog").glob("*.jpg"))[:6] + sorted(FIXTURES.glob("*.jpg"))[:3]
    for i, p in enumerate(sources):
        (d / ("sub" if i % 2 else "") / f"{i:02d} {p.name}").parent.mkdir(exist_ok=True)
        (d / ("sub" if i % 2 else "") / f"{i:02d} {p.name}").write_bytes(small_jpeg(p))
    (d / "notes.txt").write_text("not an image")
    (d / "cut.jpg").write_bytes(small_jpeg(sources[0])[:300])
    (d / ".harmony").mkdir()
    (d / ".harmony" / "index.bin").write_bytes(b"\0" * 10)
    return d


def test_import_counts_indexed_not_images_failed(running, folder, capsys):
    stack, workdir = running
    rc = stack_cli.main(["import", str(folder), "--prefix", "cli", "--workdir", str(workdir)])
    out, err = capsys.readouterr()
    assert rc == 0, (out, err)
    assert re.search(r"^11 uploaded: 9 indexed, 2 skipped as not images, 0 failed \(0 messages in", out, re.M), out
    assert "uploaded 11/11" in err and "indexing (IndexQueue)" in err, err
    assert "not an image: catalog/cli/cut.jpg" in err and "not an image: catalog/cli/notes.txt" in err, err
    keys = all_keys(stack.client(), stack.config.bucket, "catalog/cli/")
    assert len(keys) == 11 and "catalog/cli/sub/01 " + sorted((SAMPLES / "catalog").glob("*.jpg"))[1].name in keys
    assert not any(".harmony" in k for k in keys)
    # again, through `harmony import --stack`: the same objects, nothing new to index
    rc = harmony_cli.main(["import", str(folder), "--stack", "--prefix", "cli", "--workdir", str(workdir)])
    out, _ = capsys.readouterr()
    assert rc == 0 and "11 uploaded: 9 indexed, 2 skipped as not images, 0 failed" in out, out


def test_import_needs_a_folder_or_a_catalog(running, tmp_path, capsys):
    _, workdir = running
    assert stack_cli.main(["import", str(tmp_path / "nope"), "--workdir", str(workdir)]) == 2
    assert harmony_cli.main(["import", "list.json"]) == 2
    assert "--catalog DIR (a URL list) or --stack (a folder)" in capsys.readouterr().err


def test_status_and_redrive(running, capsys):
    stack, workdir = running
    s3, sqs, bucket = stack.client(), stack.client("sqs"), stack.config.bucket
    key = "catalog/redriven.jpg"
    s3.put_object(Bucket=bucket, Key=key, Body=small_jpeg(sorted(FIXTURES.glob("*.jpg"))[0]))
    stack.wait_idle(60)
    # a dead letter as IndexQueue leaves it (the notification of an upload), its record gone
    s3.delete_object(Bucket=bucket, Key=record_key(key))
    dlq = stack.queue_urls["IndexDeadLetterQueue"]
    sqs.send_message(QueueUrl=dlq, MessageBody=json.dumps(s3_event("s3-catalog-put.json", bucket, key)))
    assert stack_cli.main(["status", "--workdir", str(workdir)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"IndexDeadLetterQueue\s+dead letters\s+1\b", out), out
    assert re.search(r"IndexQueue\s+waiting\s+\d+", out), out
    assert stack_cli.main(["redrive", "--workdir", str(workdir)]) == 0
    assert "moved 1 messages from IndexDeadLetterQueue back to IndexQueue" in capsys.readouterr().out
    wait_drained(sqs, stack.queue_urls["IndexQueue"], timeout=60)
    assert queue_depth(sqs, dlq) == 0
    assert record_key(key) in all_keys(s3, bucket, "index/records/")
