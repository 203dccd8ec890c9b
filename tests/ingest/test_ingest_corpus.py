"""Public validation vectors (GOV.UK Notify's recipient tests) and our own, with the verdict we expect.

The vectors are in vectors/recipient_vectors.csv, one a line: channel, default region, options
(`allow_landlines` / `allow_smtputf8`), input (with \\t \\r \\n \\\\ and \\uXXXX escapes), the expected verdict,
`detail` (the normalised recipient of a valid row when given, else a fragment of the reason), Notify's
own verdict, where the vector came from and a note where we differ from Notify on purpose.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from worker.ingest import IngestOptions, open_recipient_file, validate_records
from worker.statuses import Status

VECTORS = Path(__file__).resolve().parent / "vectors" / "recipient_vectors.csv"
_ESCAPE = re.compile(r"\\(u[0-9A-Fa-f]{4}|[trn\\])")


def _unescape(text: str) -> str:
    def one(match: re.Match) -> str:
        code = match.group(1)
        return {"t": "\t", "r": "\r", "n": "\n", "\\": "\\"}.get(code) or chr(int(code[1:], 16))
    return _ESCAPE.sub(one, text)


def _load() -> list[dict]:
    with VECTORS.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["input"] = _unescape(row["input"])
    return rows


ALL = _load()


def _options(vector: dict, **extra) -> IngestOptions:
    flags = {name: True for name in vector["options"].split() if name}
    return IngestOptions(channel=vector["channel"], region=vector["region"] or None, **flags, **extra)


def _check(vector: dict, verdict) -> None:
    if vector["expected"] == "valid":
        assert verdict.status is Status.PENDING, (vector["input"], verdict.reason)
        if vector["detail"]:
            assert verdict.recipient == vector["detail"]
    else:
        assert verdict.status is Status.INVALID, (vector["input"], verdict.recipient)
        assert vector["detail"] in verdict.reason, (vector["input"], verdict.reason)


def test_the_corpus_is_what_it_says():
    """Enough vectors, every one with a source and an expected verdict; Notify's suites all present."""
    assert len(ALL) >= 100
    assert all(v["source"] and v["expected"] in ("valid", "invalid") for v in ALL)
    sources = {v["source"].split(": ", 1)[-1] for v in ALL if v["source"].startswith("alphagov/")}
    assert sources == {"valid_uk_mobile_phone_numbers", "valid_international_phone_numbers",
                       "invalid_uk_mobile_phone_numbers", "invalid_phone_numbers", "valid_email_addresses",
                       "invalid_email_addresses"}


@pytest.mark.parametrize("vector", ALL, ids=[f"{i}-{v['channel']}" for i, v in enumerate(ALL, start=2)])
def test_vector(vector):
    """Each vector, as a record, gets the verdict the data file expects (and its reason or recipient)."""
    key = "phone" if vector["channel"] == "sms" else "email"
    (verdict,) = list(validate_records([{key: vector["input"]}], _options(vector)))
    _check(vector, verdict)


def test_the_ten_spellings_of_one_uk_mobile_are_one_recipient():
    """Notify's ten spellings of one UK mobile (and ours with Unicode dashes) are one recipient, deduped."""
    spellings = [v["input"] for v in ALL if v["detail"] == "+447123456789"]
    assert len(spellings) >= 14
    got = list(validate_records([{"phone": s} for s in spellings], IngestOptions("sms", "GB")))
    assert [v.status for v in got] == [Status.PENDING] + [Status.DUPLICATE] * (len(spellings) - 1)


@pytest.mark.parametrize("workers", [1, 2])
def test_the_corpus_as_files_gives_the_same_verdicts(tmp_path, workers):
    """Through a file (per channel and options), in process and with a pool: the same verdicts."""
    groups: dict[tuple, list[dict]] = {}
    for v in ALL:
        groups.setdefault((v["channel"], v["region"], v["options"]), []).append(v)
    for n, ((channel, _region, _options_text), vectors) in enumerate(groups.items()):
        path = tmp_path / f"group-{n}.csv"
        with path.open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["phone" if channel == "sms" else "email", "case"])
            writer.writerows([v["input"], i] for i, v in enumerate(vectors))
        got = list(open_recipient_file(path, _options(vectors[0], workers=workers)).iter_verdicts())
        assert len(got) == len(vectors)
        for vector, verdict in zip(vectors, got):
            if verdict.status is Status.DUPLICATE:
                continue  # the same address twice in a group (the flags' variants): deduped, not judged again
            _check(vector, verdict)
