from pathlib import Path

from bot.modelslab.reference import render

DOC = Path(__file__).resolve().parents[3] / "docs" / "endpoints.md"


def test_committed_endpoint_reference_matches_the_catalogue():
    assert DOC.read_text() == render(), (
        "docs/endpoints.md is stale: run python -m bot.modelslab.reference > docs/endpoints.md")
