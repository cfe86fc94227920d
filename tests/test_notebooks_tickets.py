"""Execute notebooks/02_tickets.ipynb (full budget, < 3 min on 2 cores) from a copy outside the
repository and check the effect it reports (Minegishi et al.): the post-generalization ticket,
rewound to θ₀, groks much sooner than the dense network trained with the same budget."""

import pytest

from tests.conftest import static_images_available


@pytest.mark.slow
def test_tickets_notebook_post_generalization_ticket_groks_sooner(tmp_path, run_notebook):
    out = tmp_path / "runs"
    nb = run_notebook("02_tickets.ipynb", timeout=900, GROKINTERP_TICKETS_DIR=out)
    s = nb.summary
    assert s["out"] == str(out) and not s["fast"]
    assert (out / "parent" / "run.json").is_file() and (out / "dense" / "run.json").is_file()
    # the parent groks (else its final mask would not be a grokking ticket)
    assert s["parent"]["generalize_step"] is not None
    runs = s["runs"]
    ticket, dense = runs["ticket post-generalization"], runs["dense"]
    never = float("inf")
    assert ticket["generalize_step"] is not None and ticket["final_test_acc"] >= 0.95
    assert ticket["generalize_step"] < (dense["generalize_step"] or never)
    # at least twice as fast as the dense network (which may not grok within the budget at all)
    assert 2 * ticket["generalize_step"] <= (dense["generalize_step"] or never)
    # the memorization-phase ticket does not beat the post-generalization one
    assert (runs["ticket memorization"]["generalize_step"] or never) > ticket["generalize_step"]
    assert nb.n_figures == 4
    if static_images_available():
        assert nb.n_images == nb.n_figures
    print(f"notebook executed in {nb.elapsed:.0f} s")
