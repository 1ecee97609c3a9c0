"""The progress bar's numbers: a resumed run's rate counts only its own steps."""

import io

from fcn_cuda._progress import Progress


def _line(bar):
    return bar.stream.getvalue().strip().splitlines()[-1]


def test_rate_and_eta_count_this_runs_work():
    bar = Progress(1000, "train", stream=io.StringIO(), every=0.0)
    bar.start -= 10.0  # ten seconds ago
    bar.update(5)
    assert " 5/1000 0.50/s eta 1990s" in _line(bar)


def test_resumed_run_does_not_count_earlier_steps_in_its_rate():
    bar = Progress(1000, "train", stream=io.StringIO(), every=0.0, initial=900)
    bar.start -= 10.0
    bar.update(5, "loss 0.1")
    line = _line(bar)
    assert " 905/1000 0.50/s eta 190s loss 0.1" in line  # not 90.5/s
    assert "[" + "#" * 21 + "." * 3 + "]" in line  # the bar itself shows the whole run


def test_bar_ends_on_the_last_step_even_between_redraws():
    bar = Progress(3, "eval", stream=io.StringIO(), every=3600.0)
    bar.update(1)
    bar.update(1)
    assert bar.stream.getvalue() == ""
    bar.update(1)
    assert " 3/3 " in _line(bar)
