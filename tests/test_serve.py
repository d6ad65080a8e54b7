"""`monovl serve`: the OpenAI-compatible server, through the official `openai` client against a live
uvicorn server on 127.0.0.1, on the tiny random model with the locally trained tokenizer.

Every expected answer comes from `Engine.generate` run alone on the processor's inputs, so the
server's batching, chunked prefill and text handling are checked against the engine itself.
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import io
import json
import os
import select
import shutil
import socket
import struct
import subprocess
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn
from PIL import Image

from monovl.cli.main import build_parser
from monovl.engine import Engine, SamplingParams
from monovl.serve import MediaError, MediaPolicy, create_app
from monovl.serve.media import is_public_address
from monovl.serve.scheduler import Finished, GenerationRequest, QueueFull, Scheduler, Token

MAX_MODEL_LEN = 1024
CHUNK = 32  # small, so every prompt is prefilled in several chunks, image spans cut across them


class LiveServer:
    """uvicorn on a free 127.0.0.1 port, in a thread of this process: for `app`, or a ready-made
    `server` (from `monovl serve`'s `build_server`, listening on port 0)."""

    def __init__(self, app=None, server=None):
        self.server = server or uvicorn.Server(uvicorn.Config(app, port=0, log_level="warning"))
        self.app = self.server.config.app
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=60)

    @property
    def scheduler(self):
        return self.app.state.server.scheduler

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def serve_dir(tmp_path_factory, tiny_model_dir):
    d = tmp_path_factory.mktemp("serve") / "tiny-vl"
    shutil.copytree(tiny_model_dir, d)
    return d


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    Image.new("RGB", (120, 60), (200, 30, 30)).save(d / "red.png")
    os.symlink("/etc/passwd", d / "passwd.png")  # inside the folder, pointing outside it
    return d


@pytest.fixture(scope="module")
def live(serve_dir, media_dir):
    # Remote media allowed, so the address checks (not the blanket refusal) are what stop the
    # loopback and link-local URLs below.
    app = create_app(serve_dir, prefill_chunk=CHUNK, max_model_len=MAX_MODEL_LEN, max_num_seqs=16, max_images=4,
                     max_tiles=8, trace=True,
                     media=MediaPolicy(allow_remote=True, allowed_local_path=media_dir, fetch_timeout=2))
    yield (server := LiveServer(app))
    server.close()


def png_bytes(size=(120, 60), colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def engine_answer(live, question, images=None, history=None, max_tokens=10):
    """(text, prompt tokens, generated tokens) of `Engine.generate` alone on the processor's inputs."""
    server = live.app.state.server
    proc, stops = server.processor, server.processor.stop_token_ids
    pil = [Image.open(io.BytesIO(b)) for b in images or []]
    inputs = proc(question, images=pil or None, history=history)
    out = Engine(server.model).generate(inputs["input_ids"], inputs["pixel_values"], inputs["image_token_id"],
                                        max_new_tokens=max_tokens, stop_token_ids=stops)[0].tolist()
    kept = out[:next((i for i, t in enumerate(out) if t in stops), len(out))]
    generated = len(kept) + (len(kept) < len(out))  # the stop token counts as generated
    return proc.decode(kept), inputs["input_ids"].shape[1], generated


def user(text, *images):
    parts = [{"type": "image_url", "image_url": {"url": data_url(b)}} for b in images]
    return {"role": "user", "content": parts + [{"type": "text", "text": text}] if images else text}


def metric(live, name: str, default: float | None = None) -> float:
    for line in httpx.get(live.url + "/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    assert default is not None, f"{name} not in /metrics"
    return default


def wait_idle(live, timeout=5.0) -> None:
    deadline = time.monotonic() + timeout
    while live.scheduler.num_running or live.scheduler.num_waiting:
        assert time.monotonic() < deadline, "a slot stayed held"
        time.sleep(0.01)


# ---- API ---------------------------------------------------------------------------------------------


def test_models_health_and_page(live):
    models = live.client.models.list()
    assert [m.id for m in models.data] == ["tiny-vl"]  # the directory's basename
    assert httpx.get(live.url + "/health").json() == {"status": "ok"}
    page = httpx.get(live.url + "/")
    assert page.status_code == 200 and "<script" in page.text
    assert httpx.get(live.url + "/page/chat.js").status_code == 200


def test_plain_answer_equals_the_engine(live):
    expected, prompt_len, generated = engine_answer(live, "What is shown?", max_tokens=12)
    r = live.client.chat.completions.create(model="tiny-vl", messages=[user("What is shown?")], max_tokens=12,
                                            temperature=0)
    assert r.choices[0].message.content == expected
    assert r.choices[0].finish_reason == ("length" if generated == 12 else "stop")
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (prompt_len, generated)


def test_streamed_answer_with_usage(live):
    expected, prompt_len, generated = engine_answer(live, "Describe it.", max_tokens=16)
    stream = live.client.chat.completions.create(model="tiny-vl", messages=[user("Describe it.")],
                                                 max_completion_tokens=16, temperature=0, stream=True,
                                                 stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == generated
    assert chunks[-1].usage.prompt_tokens == prompt_len
    assert all(c.usage is None for c in chunks[:-1])


def test_image_as_data_url_and_allowed_local_file(live, media_dir):
    image = (media_dir / "red.png").read_bytes()
    expected, prompt_len, _ = engine_answer(live, "What colour?", images=[image], max_tokens=10)
    r = live.client.chat.completions.create(model="tiny-vl", messages=[user("What colour?", image)], max_tokens=10,
                                            temperature=0)
    assert r.choices[0].message.content == expected and r.usage.prompt_tokens == prompt_len
    assert prompt_len > 2 * CHUNK  # the image prompt really was prefilled in chunks
    local = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"file://{media_dir}/red.png"}},
                                         {"type": "text", "text": "What colour?"}]}
    r = live.client.chat.completions.create(model="tiny-vl", messages=[local], max_tokens=10, temperature=0)
    assert r.choices[0].message.content == expected


def test_multi_turn(live):
    image = png_bytes((64, 64), (10, 200, 10))
    first, _, _ = engine_answer(live, "Hi", images=[image], max_tokens=6)
    expected, prompt_len, _ = engine_answer(live, "And now?", images=[image], history=[("Hi", first)], max_tokens=8)
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image)}},
                                             {"type": "text", "text": "Hi"}]},
                {"role": "assistant", "content": first}, user("And now?")]
    r = live.client.chat.completions.create(model="tiny-vl", messages=messages, max_tokens=8, temperature=0)
    assert r.choices[0].message.content == expected and r.usage.prompt_tokens == prompt_len


def test_stop_strings_cut_the_answer(live):
    full, _, _ = engine_answer(live, "Tell me more.", max_tokens=30)
    text = full.strip("\ufffd")
    assert len(text) >= 6, f"the reference answer is too short to pick a stop string from: {full!r}"
    stop = text[len(text) // 2:len(text) // 2 + 2]
    expected = full[:full.find(stop)]
    r = live.client.chat.completions.create(model="tiny-vl", messages=[user("Tell me more.")], max_tokens=30,
                                            temperature=0, stop=[stop, "never in the answer \u2603"])
    assert r.choices[0].message.content == expected and r.choices[0].finish_reason == "stop"
    stream = live.client.chat.completions.create(model="tiny-vl", messages=[user("Tell me more.")], max_tokens=30,
                                                 temperature=0, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expected
    wait_idle(live)  # the stop string ended the sequence in the scheduler too


def test_seeded_sampling_matches_the_engine(live):
    server = live.app.state.server
    inputs = server.processor("Pick a word.")
    out = Engine(server.model).generate(inputs["input_ids"], max_new_tokens=8, stop_token_ids=[],
                                        sampling=SamplingParams(do_sample=True, temperature=0.9, top_p=0.95,
                                                                seed=1234))[0].tolist()
    request = GenerationRequest(inputs["input_ids"][0], None, None, 8,
                                SamplingParams(do_sample=True, temperature=0.9, top_p=0.95, seed=1234))
    assert run_direct(live.scheduler, [request])[0] == out


# ---- continuous batching -----------------------------------------------------------------------------


def test_32_concurrent_clients_get_the_one_at_a_time_answers(live):
    red, blue = png_bytes(), png_bytes((50, 90), (20, 20, 220))
    cases = []
    for i in range(32):
        question = f"question {i}: " + "tell me about it " * (i % 5)
        images = [red] if i % 3 == 0 else [blue] if i % 3 == 1 else []
        cases.append((question, images, 8 + (i * 7) % 25, i % 2 == 0))
    expected = [engine_answer(live, q, images=im, max_tokens=n)[0] for q, im, n, _ in cases]
    live.scheduler.max_batch_seen = 0
    live.scheduler.trace.clear()

    def ask(case):
        question, images, n, stream = case
        kwargs = dict(model="tiny-vl", messages=[user(question, *images)], max_tokens=n, temperature=0)
        if stream:
            return "".join(c.choices[0].delta.content or "" for c in live.client.chat.completions.create(
                stream=True, **kwargs) if c.choices)
        return live.client.chat.completions.create(**kwargs).choices[0].message.content

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(ask, cases))
    assert answers == expected
    assert live.scheduler.max_batch_seen > 4  # they really were decoded together
    trace = list(live.scheduler.trace)
    # Chunked prefill: no turn prefills more than one chunk, and while streams are running a turn's
    # prefill is always followed by a decode step (never by more prefill).
    assert all(n <= CHUNK for kind, n, _ in trace if kind == "prefill")
    for (kind, _, running), (next_kind, _, _) in zip(trace, trace[1:]):
        if kind == "prefill" and running:
            assert next_kind == "decode"
    assert any(kind == "prefill" and running >= 2 for kind, _, running in trace)
    wait_idle(live)


def run_direct(scheduler, requests, budget_check=None):
    """Submit requests straight to a scheduler; the token ids of each (stop tokens kept), in order."""
    async def main():
        handles = [scheduler.submit(r) for r in requests]
        out = []
        for h in handles:
            tokens = []
            while True:
                event = await asyncio.wait_for(h.events.get(), 30)
                if isinstance(event, Token):
                    tokens.append(event.id)
                else:
                    assert isinstance(event, Finished), event
                    if event.reason == "stop":
                        tokens.append(-1)
                    break
            out.append(tokens)
        return out

    return asyncio.run(main())


@pytest.mark.parametrize("cpu_decode", [None, False], ids=["cpu-decoder", "module-path"])
def test_rows_join_and_leave_the_running_batch_in_place_and_each_decodes_as_alone(cpu_decode):
    """RunningBatch moves one row per join or leave where its cache has room, and copies every row into
    a new cache where it has not (a longer prompt, no columns or slots left); either way each row's
    greedy tokens are those of `Engine.generate` on its prompt alone."""
    import torch

    from monovl.serve.batch import ChunkedPrefill, Row, RunningBatch
    from tiny import tiny_model

    model = tiny_model(seed=4)
    prompts = {name: list(range(3, 3 + n)) for name, n in [("a", 9), ("b", 5), ("c", 20), ("d", 7), ("e", 14),
                                                            ("f", 6), ("g", 11)]}
    new = {"a": 6, "b": 12, "c": 5, "d": 9, "e": 8, "f": 30, "g": 4}
    expected = {k: Engine(model, cpu_decode=cpu_decode).generate(torch.tensor([p]), max_new_tokens=new[k],
                                                                stop_token_ids=[])[0].tolist()
                for k, p in prompts.items()}
    batch = RunningBatch(model, cpu_decode, max_rows=4)
    calls = {"in place": 0, "new cache": 0}
    for method, name in (("_update_in_place", "in place"), ("_copy_to_new_cache", "new cache")):
        def spy(*args, _f=getattr(batch, method), _name=name):
            calls[_name] += 1
            return _f(*args)
        setattr(batch, method, spy)
    got = {}

    def join(name):
        prefill = ChunkedPrefill(model, torch.tensor(prompts[name]), None, None, chunk=64)
        token = int(prefill.step().argmax(-1))
        got[name] = [token]
        batch.rebuild(list(range(len(batch))), [(Row(name, prefill.cache.length, new[name] - 1, token),
                                                 prefill.cache)], room=4 * 48)

    def step():
        logits = batch.step()
        for row, token in zip(batch.rows, logits.argmax(-1).tolist()):
            got[row.key].append(token)
            row.token = token
        batch.rebuild([i for i, row in enumerate(batch.rows) if len(got[row.key]) < new[row.key]], room=4 * 48)

    for event in ["a", 2, "b", "c", 1, "d", 4, "e", "f", "g", 40]:
        if isinstance(event, str):
            join(event)
        else:
            for _ in range(event):
                if len(batch):
                    step()
    assert got == expected
    assert not len(batch) and batch.kv_tokens() == 0
    assert calls["in place"] >= 5 and calls["new cache"] >= 3


def test_kv_budget_queues_requests_that_do_not_fit_together(live):
    server = live.app.state.server
    a, b = server.processor("first question"), server.processor("second, longer question " * 3)
    expected = [Engine(server.model).generate(x["input_ids"], max_new_tokens=6, stop_token_ids=[])[0].tolist()
                for x in (a, b)]
    need = max(x["input_ids"].shape[1] for x in (a, b)) + 6
    scheduler = Scheduler(server.model, kv_budget_tokens=need + 10, prefill_chunk=CHUNK)  # one at a time
    scheduler.start()
    try:
        requests = [GenerationRequest(x["input_ids"][0], None, None, 6, SamplingParams()) for x in (a, b)]
        assert run_direct(scheduler, requests) == expected
        assert scheduler.max_batch_seen == 1
        with pytest.raises(ValueError, match="KV budget"):
            scheduler.submit(GenerationRequest(a["input_ids"][0], None, None, 10 * need, SamplingParams()),
                             asyncio.new_event_loop())
    finally:
        scheduler.stop()
    idle = Scheduler(server.model, kv_budget_tokens=10_000, max_queue=1)  # never started: nothing leaves the queue
    loop = asyncio.new_event_loop()
    idle.submit(requests[0], loop)
    with pytest.raises(QueueFull):
        idle.submit(requests[1], loop)
    loop.close()


def test_full_queue_is_a_503_with_retry_after(live, monkeypatch):
    monkeypatch.setattr(live.scheduler, "max_queue", 0)
    r = httpx.post(live.url + "/v1/chat/completions", json={"model": "tiny-vl", "messages": [user("hi")]})
    assert r.status_code == 503 and r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "overloaded"


def slow_decode(server, monkeypatch, seconds=0.02):
    """Make each decode step take at least `seconds`, so a stream is still running when the test acts."""
    batch = server.scheduler.batch
    step = batch.step
    monkeypatch.setattr(batch, "step", lambda: (time.sleep(seconds), step())[1])


def long_question(live, tokens=40):
    """A question whose greedy answer runs `tokens` tokens without a stop token."""
    for i in range(20):
        q = f"Write a long story number {i}."
        _, _, generated = engine_answer(live, q, max_tokens=tokens)
        if generated == tokens:
            return q
    raise AssertionError("no question gives a long answer")


def test_disconnect_mid_stream_frees_the_slot(live, monkeypatch):
    question = long_question(live)
    wait_idle(live)
    aborted = metric(live, 'monovl_requests_total{outcome="abort"}', default=0.0)
    generated_before = metric(live, "monovl_generation_tokens_total")
    slow_decode(live, monkeypatch)
    body = {"model": "tiny-vl", "messages": [user(question)], "max_tokens": 500, "temperature": 0, "stream": True}
    with httpx.stream("POST", live.url + "/v1/chat/completions", json=body, timeout=30) as r:
        seen = 0
        for line in r.iter_lines():
            seen += line.startswith("data: {")
            if seen == 4:
                break
        assert live.scheduler.num_running == 1
    wait_idle(live, timeout=3)  # 500 tokens at >= 20 ms would take 10 s: the slot was freed early
    assert metric(live, "monovl_num_requests_running") == 0
    assert metric(live, 'monovl_requests_total{outcome="abort"}') == aborted + 1
    assert 0 < metric(live, "monovl_generation_tokens_total") - generated_before < 100
    assert httpx.get(live.url + "/health").status_code == 200
    # A client that stops waiting for a non-streamed answer frees its slot too.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(live.url + "/v1/chat/completions", json={**body, "stream": False}, timeout=0.5)
    wait_idle(live, timeout=3)
    assert metric(live, 'monovl_requests_total{outcome="abort"}') == aborted + 2


def test_a_token_the_tokenizer_cannot_decode_fails_that_request_only(live, monkeypatch):
    # A checkpoint whose head is wider than its tokenizer (as a random-weight preset with a small
    # tokenizer is) can sample an id with no text: that request ends with an error, the server stays up.
    server = live.app.state.server
    make = server.processor.incremental_decoder

    def broken(**kwargs):
        decoder = make(**kwargs)
        decoder.add = lambda token_id: (_ for _ in ()).throw(ValueError(f"token id {token_id} is out of range"))
        return decoder

    monkeypatch.setattr(server.processor, "incremental_decoder", broken)
    r = httpx.post(live.url + "/v1/chat/completions", timeout=30,
                   json={"model": "tiny-vl", "messages": [user("hi")], "max_tokens": 5, "temperature": 0})
    assert r.status_code == 500 and "could not decode generated token" in r.json()["error"]["message"]
    with pytest.raises(openai.APIError, match="could not decode generated token"):
        for _ in live.client.chat.completions.create(model="tiny-vl", messages=[user("hi")], max_tokens=5,
                                                     temperature=0, stream=True):
            pass
    wait_idle(live)
    monkeypatch.undo()
    assert live.client.chat.completions.create(model="tiny-vl", messages=[user("hi")], max_tokens=3,
                                               temperature=0).usage


def test_shutdown_ends_running_streams_with_an_error_chunk(live, monkeypatch):
    server = live.app.state.server
    question = long_question(live)
    other = LiveServer(create_app(server.model, server.processor, served_model_name="other", shutdown_timeout=0.3))
    try:
        slow_decode(other, monkeypatch)
        body = {"messages": [user(question)], "max_tokens": 500, "temperature": 0, "stream": True}
        lines = []
        with httpx.stream("POST", other.url + "/v1/chat/completions", json=body, timeout=30) as r:
            for line in r.iter_lines():
                lines.append(line)
                if len(lines) == 6:
                    threading.Thread(target=other.scheduler.stop, args=(0.3,)).start()
        events = [line[6:] for line in lines if line.startswith("data: ")]
        assert events[-1] == "[DONE]" and "error" in json.loads(events[-2])
        r = httpx.post(other.url + "/v1/chat/completions", json=body)  # stopped: refuses new work
        assert r.status_code == 503
    finally:
        other.close()


# ---- hostile input -----------------------------------------------------------------------------------


def png_bomb(width=30000, height=30000) -> bytes:
    """A real 30000x30000 1-bit PNG of zeros: about 110 KB that decode to 900 million pixels."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    row = b"\x00" * (1 + (width + 7) // 8)
    comp = zlib.compressobj(9)
    block = row * 1000
    idat = b"".join(comp.compress(block) for _ in range(height // 1000)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def connected(listener: socket.socket) -> bool:
    """Whether anyone connected to `listener` (a listening socket with a short timeout)."""
    try:
        listener.accept()[0].close()
        return True
    except socket.timeout:
        return False


def image_message(url):
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": "what is it?"}]}]


HOSTILE = {
    "file:///etc/passwd": (lambda d: image_message("file:///etc/passwd"), "outside the allowed media path"),
    "symlink out of the media folder": (lambda d: image_message(f"file://{d}/passwd.png"), "outside the allowed"),
    "plain path": (lambda d: image_message("/etc/passwd"), "outside the allowed media path"),
    "link-local metadata": (lambda d: image_message("http://169.254.169.254/latest/meta-data/"), "link-local"),
    "bad base64": (lambda d: image_message("data:image/png;base64,iVBORw0KGgo***notbase64"), "invalid base64"),
    "png bomb": (lambda d: image_message(data_url(png_bomb())), "too many pixels"),
    "unsupported format": (lambda d: image_message(data_url(b"<svg xmlns='http://www.w3.org/2000/svg'/>",
                                                            "image/svg+xml")), "unsupported or unreadable"),
    "1000 image parts": (lambda d: [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(png_bytes((8, 8)))}}] * 1000}], "too many images"),
    "too many tiles": (lambda d: [user("wide", png_bytes((600, 100)), png_bytes((600, 100)))], "too many tiles"),
    "over-long prompt": (lambda d: [user("tell me about it " * 400)], "max_model_len"),
    "reserved image token": (lambda d: [user("hi <IMG_CONTEXT>")], "reserved image token"),
    "assistant last": (lambda d: [user("hi"), {"role": "assistant", "content": "x"}], "end with a user message"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_input_is_a_400_and_the_server_stays_healthy(live, media_dir, case):
    make, message = HOSTILE[case]
    with pytest.raises(openai.BadRequestError) as info:
        live.client.chat.completions.create(model="tiny-vl", messages=make(media_dir), max_tokens=4)
    error = info.value.body
    assert message in error["message"], error
    assert set(error) >= {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert httpx.get(live.url + "/health").status_code == 200
    assert live.scheduler.num_running == 0 and live.scheduler.num_waiting == 0


def test_loopback_url_is_refused_without_connecting(live):
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    port = listener.getsockname()[1]
    for host in ("127.0.0.1", "localhost"):
        with pytest.raises(openai.BadRequestError, match="loopback"):
            live.client.chat.completions.create(
                model="tiny-vl", messages=image_message(f"http://{host}:{port}/x"), max_tokens=4)
    # The default policy refuses http(s) outright, before resolving anything.
    with pytest.raises(MediaError, match="allow-remote-media"):
        MediaPolicy().load(f"http://127.0.0.1:{port}/x")
    assert not connected(listener)
    with pytest.raises(MediaError, match="allowed-local-media-path"):
        MediaPolicy().load("file:///etc/passwd")
    listener.close()


@pytest.mark.parametrize("address,public", [
    ("127.0.0.1", False), ("10.1.2.3", False), ("192.168.0.1", False), ("172.16.5.4", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("::1", False), ("fe80::1", False),
    ("::ffff:127.0.0.1", False), ("fd00::1", False), ("224.0.0.1", False), ("8.8.8.8", True),
    ("2606:4700:4700::1111", True)])
def test_public_address_rule(address, public):
    assert is_public_address(address) is public


def test_malformed_requests(live):
    url = live.url + "/v1/chat/completions"
    r = httpx.post(url, content=b'{"messages": [', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(url, content=b"x" * (100 * 1024 * 1024), headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    r = httpx.post(url, json={"messages": [user("hi")], "n": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"
    r = httpx.post(url, json={"messages": [user("hi")], "max_tokens": MAX_MODEL_LEN})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    r = httpx.post(url, json={"messages": [user("hi")], "temperature": -1})
    assert r.status_code == 400 and "temperature" in r.json()["error"]["message"]
    r = httpx.post(url, json={"model": "gpt-4", "messages": [user("hi")]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert httpx.get(live.url + "/health").status_code == 200
    wait_idle(live)


# ---- command line ------------------------------------------------------------------------------------


def test_serve_command_line(serve_dir, media_dir):
    from monovl.cli.serve import build_server, config_from_args

    args = build_parser().parse_args(["serve", "--model", str(serve_dir), "--port", "0", "--max-num-seqs", "3",
                                      "--max-model-len", "300", "--allowed-local-media-path", str(media_dir),
                                      "--log-level", "warning"])
    config = config_from_args(args)
    assert config.served_model_name == "tiny-vl" and config.max_num_seqs == 3 and config.max_model_len == 300
    assert config.media.allowed_local_path == media_dir and not config.media.allow_remote
    server = LiveServer(server=build_server(args))
    assert server.client.models.list().data[0].model_dump()["max_model_len"] == 300
    r = server.client.chat.completions.create(model="tiny-vl", messages=[user("hi")], max_tokens=3, temperature=0)
    assert r.usage.completion_tokens >= 1
    server.close()
    assert not server.thread.is_alive() and not server.scheduler._thread


# ---- chat page in a real browser ---------------------------------------------------------------------


def find_chromium() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


def _high_fd(fd: int) -> int:
    """`fd` moved to a number >= 100, so that moving it onto 3 or 4 cannot overwrite another pipe end
    (bash takes multi-digit fds in redirections; dash does not, hence bash)."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 100)
    os.close(fd)
    return high


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe: JSON
    messages separated by NUL bytes on fds 3 and 4), so no WebDriver or websocket client is needed."""

    def __init__(self, binary: str, profile):
        to_browser, self._out = os.pipe()
        self._in, from_browser = os.pipe()
        to_browser, from_browser = _high_fd(to_browser), _high_fd(from_browser)
        # bash moves the pipe ends onto fds 3 and 4, where Chromium expects them.
        script = f'exec "$@" 3<&{to_browser} 4>&{from_browser}'
        self.proc = subprocess.Popen(
            ["bash", "-c", script, "bash", binary, "--headless=new", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", "--no-first-run", "--remote-debugging-pipe", f"--user-data-dir={profile}",
             "about:blank"], pass_fds=(to_browser, from_browser), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(to_browser)
        os.close(from_browser)
        self._ids, self._buffer = 0, b""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

    def send(self, method, params=None, session=None, timeout=30.0):
        self._ids += 1
        message = {"id": self._ids, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._ids:
                    assert "error" not in reply, reply["error"]
                    return reply["result"]
            ready, _, _ = select.select([self._in], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"no reply to {method} from Chromium"
            chunk = os.read(self._in, 1 << 16)
            assert chunk, "Chromium closed the DevTools pipe"
            self._buffer += chunk

    def page(self, method, params=None):
        return self.send(method, params, self.session)

    def js(self, expression):  # the value of a JavaScript expression in the page
        result = self.page("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def wait(self, expression, timeout=30.0):
        deadline = time.monotonic() + timeout
        while not self.js(expression):
            assert time.monotonic() < deadline, f"timed out waiting for {expression}"
            time.sleep(0.05)

    def close(self):
        """Ask Chromium to quit (it ends its own helper processes), then make sure it did."""
        try:
            self.send("Browser.close", timeout=5)
        except (AssertionError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._in)
        os.close(self._out)


LAST_ANSWER = "[...document.querySelectorAll('.assistant')].at(-1)"


def test_chat_page_in_headless_chromium(live, media_dir, tmp_path):
    binary = find_chromium()
    if binary is None:
        pytest.skip("Chromium not found (chromium or chromium-browser on PATH): the browser test needs it; "
                    ".ci/run installs Debian's chromium package where apt-get is available")
    image = media_dir / "red.png"
    first, _, _ = engine_answer(live, "What colour is it?", images=[image.read_bytes()], max_tokens=12)
    second, _, _ = engine_answer(live, "Why?", images=[image.read_bytes()], history=[("What colour is it?", first)],
                                 max_tokens=12)
    browser = Browser(binary, tmp_path / "profile")
    try:
        browser.page("Page.navigate", {"url": live.url + "/"})
        browser.wait("document.body && document.body.dataset.ready === 'true'")
        root = browser.page("DOM.getDocument")["root"]["nodeId"]
        node = browser.page("DOM.querySelector", {"nodeId": root, "selector": "#image-input"})["nodeId"]
        browser.page("DOM.setFileInputFiles", {"files": [str(image)], "nodeId": node})  # a real upload
        browser.wait("!document.getElementById('stage').hidden && document.getElementById('image').complete")
        browser.js("window.updates = 0; new MutationObserver(() => window.updates++).observe("
                   "document.getElementById('messages'), {subtree: true, characterData: true, childList: true});"
                   "document.getElementById('max-tokens').value = '12'")
        for question, expected in (("What colour is it?", first), ("Why?", second)):
            browser.js(f"document.getElementById('question').value = {json.dumps(question)};"
                       "document.getElementById('send').click()")
            browser.wait(f"{LAST_ANSWER} && {LAST_ANSWER}.dataset.done === 'true'")
            assert browser.js(f"{LAST_ANSWER}.textContent") == expected
        assert browser.js("document.querySelectorAll('.error').length") == 0
        assert browser.js("window.updates") > 6  # the answers arrived piece by piece
        assert browser.js("monovlChat.state.messages.length") == 4
        boxes = browser.js("monovlChat.parseBoxes('<ref>cat</ref><box>[[100, 200, 300, 400],[500,500,600,700]]</box>"
                           " and <box>[[0,0,1000,1000]]</box>')")
        assert boxes == [{"label": "cat", "box": [100, 200, 300, 400]}, {"label": "cat", "box": [500, 500, 600, 700]},
                         {"label": None, "box": [0, 0, 1000, 1000]}]
        browser.js(f"monovlChat.drawBoxes({json.dumps(boxes)})")
        drawn = browser.js("[...document.querySelectorAll('#boxes .box')].map(b => [b.style.left, b.style.top, "
                           "b.style.width, b.style.height, b.textContent])")
        assert drawn == [["10%", "20%", "20%", "20%", "cat"], ["50%", "50%", "10%", "20%", "cat"],
                         ["0%", "0%", "100%", "100%", ""]]
    finally:
        browser.close()
    wait_idle(live)


def test_a_server_binary_that_never_gets_healthy_is_killed_with_its_workers(tmp_path):
    """`monovl.vllm.start_server` (how the vLLM tests and `bench_serve.py --vllm` start `vllm serve`)
    gives up after its timeout and leaves no process behind, workers included."""
    from monovl.vllm import start_server

    child = tmp_path / "child.pid"
    fake = tmp_path / "fake-vllm"
    fake.write_text(f"#!/bin/sh\nsleep 300 &\necho $! > {child}\nwait\n")  # a worker; /health never answers
    fake.chmod(0o755)
    with pytest.raises(RuntimeError, match="not healthy after 2 s"):
        start_server(fake, tmp_path, [], tmp_path / "serve.log", timeout=2)
    pid = int(child.read_text())
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists() and "State:\tZ" not in Path(f"/proc/{pid}/status").read_text():
        assert time.monotonic() < deadline, "the server's worker outlived it"
        time.sleep(0.05)
