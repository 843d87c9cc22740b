"""dashboards/beam-qa.json: what `gcloud monitoring dashboards create` accepts, naming only documented metrics.

The metric names come from the dashboard (parsed PromQL) and from docs/metrics.md's tables, never
from a list here: the pipeline's metrics are renamed and added elsewhere, and the doc is what
tests/integration/test_metrics.py proves the pipeline emits.
"""

import json
import re
from pathlib import Path

import promql_parser
import pytest

from tests.gcloud_cli import unrecognized_fields
from tests.metrics_doc import documented

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "dashboards" / "beam-qa.json"
DOC = REPO / "docs" / "metrics.md"
MONITORING_MESSAGES = "googlecloudsdk.generated_clients.apis.monitoring.v1.monitoring_v1_messages"
USER_COUNTER = "dataflow_googleapis_com:job_user_counter"
# How Dataflow presents a Beam distribution in Cloud Monitoring (docs/metrics.md).
DISTRIBUTION_PARTS = ("_MEAN", "_MIN", "_MAX", "_COUNT")


def doc_dashboard_section() -> str:
    text = DOC.read_text(encoding="utf-8")
    assert "\n## Dashboard\n" in text, "docs/metrics.md has no Dashboard section"
    return text.split("\n## Dashboard\n", 1)[1].split("\n## ", 1)[0]


def promql_name(monitoring_type: str) -> str:
    """Cloud Monitoring metric type -> PromQL name: first / to :, other special characters to _."""
    domain, path = monitoring_type.split("/", 1)
    return re.sub(r"[^A-Za-z0-9_]", "_", domain) + ":" + re.sub(r"[^A-Za-z0-9_]", "_", path)


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tiles(dashboard) -> list[dict]:
    return dashboard["mosaicLayout"]["tiles"]


@pytest.fixture(scope="module")
def queries(tiles) -> list[tuple[str, str]]:
    """(chart title, PromQL) for every data set of every chart."""
    found = []
    for tile in tiles:
        for data_set in tile["widget"]["xyChart"]["dataSets"]:
            assert set(data_set["timeSeriesQuery"]) == {"prometheusQuery"}, tile["widget"]["title"]
            found.append((tile["widget"]["title"], data_set["timeSeriesQuery"]["prometheusQuery"]))
    return found


def selectors(query: str) -> list[promql_parser.VectorSelector]:
    found = []
    promql_parser.walk(promql_parser.parse(query),
                       lambda node: found.append(node) if isinstance(node, promql_parser.VectorSelector) else None)
    return found


def test_every_field_is_one_the_dashboard_api_knows(dashboard, tmp_path):
    """gcloud parses the file into these messages before it calls the API; unknown keys or enum
    values would be dropped or refused there."""
    assert unrecognized_fields(MONITORING_MESSAGES, "Dashboard", dashboard, tmp_path) == []


def test_layout_is_a_grid_of_titled_charts_that_do_not_overlap(dashboard, tiles):
    assert dashboard["displayName"] == "beam-qa"
    columns = dashboard["mosaicLayout"]["columns"]
    taken = set()
    for tile in tiles:
        title = tile["widget"].get("title", "")
        assert title.strip() and "xyChart" in tile["widget"], tile
        assert 0 <= tile.get("xPos", 0) and tile.get("xPos", 0) + tile["width"] <= columns, title
        cells = {(x, y) for x in range(tile.get("xPos", 0), tile.get("xPos", 0) + tile["width"])
                 for y in range(tile.get("yPos", 0), tile.get("yPos", 0) + tile["height"])}
        assert not cells & taken, f"{title} overlaps another chart"
        taken |= cells
    titles = [tile["widget"]["title"] for tile in tiles]
    assert len(titles) == len(set(titles))


def test_every_query_parses_and_reads_a_metric(queries):
    assert queries
    for title, query in queries:
        assert selectors(query), f"{title}: no metric in {query!r}"


def test_every_beam_qa_metric_the_dashboard_names_is_documented_with_its_kind(queries):
    docs = documented()
    assert docs, "no metric tables found in docs/metrics.md"
    charted = set()
    for title, query in queries:
        for selector in selectors(query):
            if selector.name != USER_COUNTER:
                continue
            matchers = [m for m in selector.matchers.matchers if m.name == "metric_name"]
            assert len(matchers) == 1, f"{title}: a user_counter query must pick its metric by metric_name"
            matcher = matchers[0]
            if str(matcher.op).endswith("Equal") and "Not" not in str(matcher.op):
                names = [matcher.value]
            else:
                assert str(matcher.op).endswith(".Re"), f"{title}: unexpected matcher {matcher.op}"
                names = [n for n in matcher.value.split("|") if re.fullmatch(r"[A-Za-z0-9_]+", n)]
                for pattern in matcher.value.split("|"):
                    if pattern in names:
                        continue
                    hits = [n for n in docs if re.fullmatch(pattern, n)]
                    assert hits, f"{title}: {pattern!r} matches no metric in docs/metrics.md"
                    assert {docs[n] for n in hits} == {"counter"}, f"{title}: {pattern!r} matches distributions"
                    charted.update(hits)
            for name in names:
                part = next((p for p in DISTRIBUTION_PARTS if name.endswith(p)), "")
                base = name.removesuffix(part) if part else name
                assert base in docs, f"{title}: {base!r} is not in docs/metrics.md's tables"
                assert docs[base] == ("distribution" if part else "counter"), (
                    f"{title}: {name!r} is read as a {'distribution' if part else 'counter'}, "
                    f"docs/metrics.md says {docs[base]}")
                charted.add(base)
    # The charts the issue asks for read these (names taken from the doc, so a rename shows here).
    for wanted in ("files_done", "files_failed", "rows_answered", "upload_to_answer_ms",
                   "inference_request_batch_size", "inference_batch_latency_micro_secs"):
        assert wanted in charted, f"no chart reads {wanted}"
    assert any(name.startswith("row_errors_") for name in charted), "no chart of row errors by reason"


def test_the_job_and_subscription_metrics_are_the_documented_ones(queries):
    section = doc_dashboard_section()
    documented_types = set(re.findall(r"`((?:dataflow|pubsub)\.googleapis\.com/[a-z_/]+)`", section))
    allowed = {promql_name(t) for t in documented_types} | {USER_COUNTER}
    used = {selector.name for _, query in queries for selector in selectors(query)}
    assert used <= allowed, f"metrics not described in docs/metrics.md's Dashboard section: {sorted(used - allowed)}"
    for needed in ("job/data_watermark_age", "job/system_lag", "subscription/num_undelivered_messages"):
        assert any(name.endswith(needed.replace("/", "_")) for name in used), f"no chart of {needed}"


def test_docs_list_every_chart(tiles):
    rows = re.findall(r"^\| ([^|`][^|]*?) \| ", doc_dashboard_section(), re.M)
    listed = [row for row in rows if row != "chart"]
    titles = [tile["widget"]["title"] for tile in tiles]
    assert sorted(listed) == sorted(titles), (
        f"charts missing from docs/metrics.md: {sorted(set(titles) - set(listed))}; "
        f"listed but not in the dashboard: {sorted(set(listed) - set(titles))}")
