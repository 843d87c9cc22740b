"""With the demo model, `make run`'s stack answers the README's Eiffel Tower example through the web page.

The demo model is the full build when one is cached (`make demo-model`), else the quick recipe,
which the ``demo_model_dir`` fixture builds once (a few minutes on 2 cores) and caches under
``.cache/demo-model/``: this test runs wherever the suite runs, CI included, and never skips for
want of a model. The stack chooses the model itself, as `make run` does without QA_MODEL and
without the Hub.
"""

from __future__ import annotations

import pytest

from devtools import demo_model
from devtools.squad_eval import normalize_answer
from tests.conftest import csv_bytes
from tests.upload.test_browser import page, row, wait_for_rows  # noqa: F401  (page: the chromium fixture)

# The first use builds the quick demo model inside the fixture: more than the suite's 600 s per test
# on a loaded machine.
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(3600)]

README_EXAMPLE = ("1", "Where is the Eiffel Tower?",
                  "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris.")


@pytest.fixture(scope="module")
def demo_stack(tmp_path_factory, demo_model_dir):
    from tests.e2e.support import running_stack
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")  # as on a machine without the Hub
        with running_stack(tmp_path_factory, "", "demo-e2e", with_upload=True, client_env=False) as running:
            yield running


def test_the_stack_chooses_the_demo_model_without_qa_model_or_hub(demo_stack, demo_model_dir):
    assert demo_stack.model_description.startswith(str(demo_model_dir))
    assert "demo model" in demo_stack.model_description


def test_the_page_answers_the_eiffel_tower_example(demo_stack, page, tmp_path):  # noqa: F811
    path = tmp_path / "my.csv"
    path.write_bytes(csv_bytes(["id", "question", "context"], [list(README_EXAMPLE)]))
    page.goto(demo_stack.config.upload_url + "/")
    page.set_input_files("#files", str(path))
    page.click("#upload-button")
    wait_for_rows(page, ["my.csv"], ("done",), demo_stack)
    page.click(f'{row(page, "my.csv")} button.show-answers')
    page.wait_for_selector("#answers tbody tr:nth-child(1)")
    cells = page.eval_on_selector_all("#answers tbody tr", "rows => rows.map(r => Array.from(r.cells, c => c.textContent))")
    answer = cells[0][3]
    # A real model finds the place; random weights give spans like "lattice tower on the".
    assert normalize_answer(answer) in {"champ de mars", "champ de mars in paris", "paris"}, cells[0]


def test_the_demo_model_in_use_is_a_known_recipe(demo_model_dir):
    info = demo_model.build_info(demo_model_dir)
    assert info["recipe_name"] in demo_model.RECIPES
    assert info["recipe_digest"] == demo_model.RECIPES[info["recipe_name"]].digest()
