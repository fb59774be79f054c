from codegemma.stop_strings import StopStringFilter


def run(stops, pieces):
    f = StopStringFilter(stops)
    out = [f.feed(p) for p in pieces]
    if f.matched is None:
        out.append(f.flush())
    return "".join(out), f.matched, out


def test_stop_string_split_across_pieces_is_caught_and_removed():
    text, matched, _ = run(["\ndef "], ["x = 1", "\n", "de", "f foo"])
    assert (text, matched) == ("x = 1", "\ndef ")


def test_partial_match_is_held_then_released():
    text, matched, pieces = run(["STOP"], ["abc S", "T", "x"])
    assert matched is None and text == "abc STx"
    assert pieces[0] == "abc "  # "S" held back while it could start "STOP"


def test_earliest_stop_wins():
    text, matched, _ = run(["bb", "a"], ["xxbba"])
    assert (text, matched) == ("xx", "bb")


def test_no_stops_passes_everything():
    assert run([], ["a", "b"])[0] == "ab"
