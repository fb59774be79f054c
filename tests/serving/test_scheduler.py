"""The scheduler on its own: concurrent requests equal requests run alone, superseding, limits."""

import queue
import threading
import time

import pytest
from serving_helpers import SlowModel, lively_engine
from tiny_models import REPETITIVE, tiny_config

import codegemma
from codegemma.engine import CodeGemma
from codegemma.quant.decode_step import DecodeStep
from codegemma.sampling import SamplingParams
from codegemma.serving.adapters import timings
from codegemma.serving.limits import EditorLimits
from codegemma.serving.requests import ChatInput, FimInput, GenerationRequest, TextInput
from codegemma.serving.scheduler import Done, Failed, Piece, Scheduler


@pytest.fixture(scope="module")
def lm(tiny_tokenizer):
    return lively_engine(tiny_tokenizer)


@pytest.fixture(scope="module")
def native_lm(trained_checkpoint):
    return codegemma.load(trained_checkpoint, quantize="int8", kernels="native", threads=2)


def scheduler_for(lm, **options):
    return make_scheduler(lm, **options).start()


def make_scheduler(lm, **options):
    # One thread: tiny matrices gain nothing from more, and a busy machine stalls OpenMP teams.
    return Scheduler(lm, threads=1, **options)


def collect(scheduler, request):
    """Submit and wait: (pieces, final event)."""
    events = queue.Queue()
    scheduler.submit(request, events.put)
    pieces = []
    while True:
        event = events.get(timeout=30)
        if isinstance(event, Piece):
            pieces.append(event.text)
        else:
            return pieces, event


def requests():
    out = []
    for i in range(10):
        prefix = f"def f{i}(x):\n    return x * {i}" + "\n    # pad" * (i * 3)
        out.append(GenerationRequest(FimInput(prefix, "\n\nprint(f())\n"), max_tokens=12))
        out.append(GenerationRequest(TextInput(f"import m{i}\n"), max_tokens=7 + i))
    out.append(GenerationRequest(ChatInput(({"role": "user", "content": "hi"},)), max_tokens=9))
    out.append(
        GenerationRequest(
            TextInput("seeded"), max_tokens=10, sampling=SamplingParams(temperature=1.0, seed=3)
        )
    )
    return out


@pytest.mark.parametrize("engine", ["lm", "native_lm"])
def test_concurrent_requests_equal_requests_run_alone(engine, request):
    # plain PyTorch (float32) and the native kernels (int8, whole-stack decode step)
    lm = request.getfixturevalue(engine)
    alone_scheduler = scheduler_for(lm, prefill_chunk=8)
    try:
        alone = [collect(alone_scheduler, r) for r in requests()]
    finally:
        alone_scheduler.close()
    together_scheduler = scheduler_for(lm, prefill_chunk=8, max_active=4)
    results = {}
    try:
        threads = [
            threading.Thread(
                target=lambda i=i, r=r: results.setdefault(i, collect(together_scheduler, r))
            )
            for i, r in enumerate(requests())
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        together_scheduler.close()
    assert len(results) == len(alone)
    for i, (pieces, done) in enumerate(alone):
        assert isinstance(done, Done)
        got_pieces, got = results[i]
        assert "".join(got_pieces) == "".join(pieces) == done.result.text
        assert got.result.text == done.result.text
        assert got.result.completion_tokens == done.result.completion_tokens


def test_results_equal_the_engine(lm):
    scheduler = scheduler_for(lm, prefill_chunk=5)
    try:
        prefix, suffix = "for i in range(10):\n    ", "\nprint(i)\n"
        _, done = collect(scheduler, GenerationRequest(FimInput(prefix, suffix), max_tokens=16))
        assert done.result.text == lm.complete(prefix, suffix, mode="spm", max_new_tokens=16).text
        _, done = collect(
            scheduler, GenerationRequest(FimInput(prefix, suffix, mode="psm"), max_tokens=16)
        )
        assert done.result.text == lm.complete(prefix, suffix, mode="psm", max_new_tokens=16).text
        assert done.result.cached_tokens <= 3  # PSM: the prompt differs right after the prefix
    finally:
        scheduler.close()


def test_typing_reuses_the_cache_in_spm_order(lm):
    scheduler = scheduler_for(lm)
    try:
        line = "    total = sum(values)"
        prefix = "def mean(values):\n"
        evaluated = []
        for end in range(4, len(line) + 1, 4):
            request = GenerationRequest(
                FimInput(prefix + line[:end], "\n    return x\n"), max_tokens=4
            )
            _, done = collect(scheduler, request)
            evaluated.append(done.result.evaluated_tokens)
        assert max(evaluated[1:]) <= 6  # a few tokens per keystroke, not the whole prompt
    finally:
        scheduler.close()


def test_a_queued_job_superseded_by_its_client_never_runs(lm):
    scheduler = make_scheduler(lm)  # not started
    events = queue.Queue()
    old = scheduler.submit(GenerationRequest(TextInput("a"), max_tokens=5, client="c"), events.put)
    scheduler.submit(GenerationRequest(TextInput("b"), max_tokens=5, client="c"), events.put)
    assert old.cancelled
    scheduler.start()
    try:
        finals = [events.get(timeout=30) for _ in range(2)]
        finals = [e for e in finals if not isinstance(e, Piece)]
        while len(finals) < 2:
            event = events.get(timeout=30)
            if not isinstance(event, Piece):
                finals.append(event)
        reasons = sorted(e.result.finish_reason for e in finals)
        assert reasons[0] == "cancelled"
        cancelled = next(e for e in finals if e.result.finish_reason == "cancelled")
        assert cancelled.result.completion_tokens == 0
    finally:
        scheduler.close()


def test_a_receiver_that_raises_does_not_stop_the_scheduler(lm):
    scheduler = scheduler_for(lm)
    try:

        def broken(event):
            raise RuntimeError("receiver gone")

        scheduler.submit(GenerationRequest(TextInput("x"), max_tokens=50), broken)
        _, done = collect(scheduler, GenerationRequest(TextInput("y"), max_tokens=3))
        assert isinstance(done, Done) and done.result.completion_tokens >= 1
    finally:
        scheduler.close()


def test_close_fails_waiting_jobs(lm):
    scheduler = make_scheduler(lm)
    events = queue.Queue()
    scheduler.submit(GenerationRequest(TextInput("x"), max_tokens=3), events.put)
    scheduler.start()
    scheduler.close()
    while True:
        event = events.get(timeout=10)
        if not isinstance(event, Piece):
            break
    assert isinstance(event, (Done, Failed))


def test_indent_limit_ends_before_a_dedented_line():
    limits = EditorLimits(min_indent=4)
    pieces = ["    x = 1\n", "  ", "  y = 2\n\n", "    z\n", "w = 3\n", "more"]
    text = "".join(limits.feed(p) for p in pieces)
    assert text == "    x = 1\n    y = 2\n\n    z" and limits.hit
    assert limits.feed("later") == ""


def test_indent_limit_holds_only_undecided_indentation():
    limits = EditorLimits(min_indent=2)
    assert limits.feed("a\n ") == "a"
    assert limits.feed(" b") == "\n  b"
    assert limits.flush() == "" and not limits.hit
    limits = EditorLimits(min_indent=2)
    limits.feed("a\n  ")
    assert limits.flush() == "\n  "  # the stream ended while the indentation was undecided


def test_newline_deadline():
    limits = EditorLimits(deadline_ms=1e-6)
    assert limits.feed("first") == "first" and not limits.hit  # no newline yet
    limits.feed("second\n")
    assert limits.hit


def test_a_running_job_superseded_by_its_client_stops_within_one_step(tiny_tokenizer):
    script = tiny_tokenizer.encode("abc", add_bos=False)  # never stops on its own
    model = SlowModel(tiny_config(tiny_tokenizer.vocab_size), script, delay=0.02)
    scheduler = scheduler_for(CodeGemma(model, tiny_tokenizer, name="tiny", speculate=0))
    try:
        old_events, new_events = queue.Queue(), queue.Queue()
        old = scheduler.submit(
            GenerationRequest(TextInput("a"), max_tokens=400, client="c"), old_events.put
        )
        while old.sequence is None or old.sequence.generated < 5:
            time.sleep(0.005)
        generated = old.sequence.generated
        scheduler.submit(
            GenerationRequest(TextInput("b"), max_tokens=3, client="c"), new_events.put
        )
        old_done = final_event(old_events)
        # At most the step under way when the newer request came, and one begun meanwhile.
        assert old_done.result.finish_reason == "cancelled"
        assert old_done.result.completion_tokens <= generated + 2
        assert final_event(new_events).result.completion_tokens == 3
    finally:
        scheduler.close()


def final_event(events):
    while True:
        event = events.get(timeout=30)
        if not isinstance(event, Piece):
            return event


def test_requests_decoding_together_share_each_forward_pass(trained_checkpoint, monkeypatch):
    # continuous batching: with 4 requests decoding, a step is one pass over 4 rows, not 4
    # (no speculation here, so every pass carries one row per sequence)
    lm = codegemma.load(trained_checkpoint, quantize="int8", kernels="native", speculate=0)
    rows = []
    run = DecodeStep.run

    def counting(self, model, x, *args):
        rows.append(x.shape[0])  # the rows of one whole-stack decode pass
        return run(self, model, x, *args)

    monkeypatch.setattr(DecodeStep, "run", counting)
    scheduler = make_scheduler(lm, max_active=4)
    events = [queue.Queue() for _ in range(4)]
    prompts = 0
    for i, box in enumerate(events):  # queued before the worker starts: they run together
        request = GenerationRequest(TextInput(f"x{i} = "), max_tokens=24, ignore_eos=True)
        prompts += len(scheduler.build(request).ids)
        scheduler.submit(request, box.put)
    scheduler.start()
    try:
        done = [final_event(box) for box in events]
    finally:
        scheduler.close()
    assert [d.result.completion_tokens for d in done] == [24] * 4
    # the four short prompts in one pass, then one pass per step for all four (not 4 x 23)
    assert rows == [prompts] + [4] * 23
    assert scheduler.engine.forward_passes == len(rows)


def test_speculation_inside_the_server_engine_changes_no_answer(trained_checkpoint):
    # text the model repeats: drafted tokens are checked in the server's batched decode passes
    text = REPETITIVE
    answers, passes, drafts = {}, {}, {}
    for speculate in (0, 8):
        lm = codegemma.load(trained_checkpoint, quantize="int8", kernels="native")
        lm.default_speculation = speculate
        scheduler = scheduler_for(lm)
        try:
            boxes = [queue.Queue() for _ in range(3)]
            for box in boxes:
                request = GenerationRequest(TextInput(text), max_tokens=40, ignore_eos=True)
                scheduler.submit(request, box.put)
            results = [final_event(box).result for box in boxes]
            answers[speculate] = [r.text for r in results]
            drafts[speculate] = [timings(r) for r in results]
        finally:
            scheduler.close()
        passes[speculate] = scheduler.engine.forward_passes
    assert answers[8] == answers[0]
    assert passes[8] < passes[0]
    # every answer's timings say how many drafted tokens were checked and kept (llama-server's
    # names); without speculation none are
    assert all(t["draft_n"] == t["draft_n_accepted"] == 0 for t in drafts[0])
    assert all(0 < t["draft_n_accepted"] <= t["draft_n"] for t in drafts[8])


def test_a_prompt_delays_decoding_by_at_most_one_chunk(lm, monkeypatch):
    # a long prompt arriving while another request decodes is cut into chunks, and a decode
    # pass runs between any two of them
    passes = []
    forward = type(lm.model).forward

    def recording(self, input_ids, **kw):
        passes.append(input_ids.shape[1])
        return forward(self, input_ids, **kw)

    monkeypatch.setattr(type(lm.model), "forward", recording)
    scheduler = make_scheduler(lm, prefill_chunk=16)
    short, long_ = queue.Queue(), queue.Queue()
    scheduler.submit(
        GenerationRequest(TextInput("a = "), max_tokens=100, ignore_eos=True), short.put
    )
    text = "".join(f"value_{i} = {i} * {i}\n" for i in range(40))
    scheduler.submit(GenerationRequest(TextInput(text), max_tokens=2, ignore_eos=True), long_.put)
    scheduler.start()
    try:
        final_event(long_), final_event(short)
    finally:
        scheduler.close()
    chunks = [i for i, t in enumerate(passes) if t > 1][1:]  # the long prompt's passes
    assert len(chunks) > 5 and all(passes[i] <= 16 for i in chunks)
    between = [passes[a + 1 : b] for a, b in zip(chunks, chunks[1:], strict=False)]
    assert all(1 in gap for gap in between[:-1])  # the short request decoded in between
