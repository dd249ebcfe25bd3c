"""`posttrain push`: the staged folder read back with huggingface_hub's, PEFT's and transformers' own loaders, and
the upload sent through huggingface_hub to a local stand-in for the Hub's API (a real subprocess with HF_ENDPOINT
and HF_TOKEN set, as huggingface_hub reads them at import); no token, offline mode, an unreachable endpoint and a
401 or 403 are one line and exit 2, the staged folder kept."""

import base64
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conftest import cli
from posttrain.push import hub_id, model_card, push, recipe_settings

TOKEN = f"hf_{uuid.uuid4().hex}"  # a fresh string: finding it anywhere in the output is a leak


AGENTS = "/api/agent-harnesses"  # a registry huggingface_hub fetches (no token) to describe its caller


class _Handler(BaseHTTPRequestHandler):
    """The Hub API routes huggingface_hub 2.4 calls for create_repo, create_branch and upload_folder (with hf_xet
    installed or not), and its agent-harness registry. Preupload answers "regular" for every file, so each file's
    bytes go inline (base64) in the commit's NDJSON payload: no LFS or Xet transfer."""

    timeout = 10  # a connection left open by a client ends; the handler never blocks for longer

    def log_message(self, *args):
        pass

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def _answer(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        hub = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = urlsplit(self.path).path
        hub.requests.append({"method": method, "path": path, "auth": self.headers.get("Authorization"),
                             "body": body})
        if hub.status is not None:  # every route fails alike (create_repo then asks repo_info, which fails too)
            return self._answer(hub.status, {"error": f"status {hub.status} from the test hub"})
        if method == "GET" and path == AGENTS:
            return self._answer(200, {"standardEnvVars": [], "harnesses": {}})
        if method == "POST" and path == "/api/repos/create":
            payload = json.loads(body)
            return self._answer(200, {"url": f"{hub.url}/{payload['organization']}/{payload['name']}"})
        if method == "POST" and path == "/api/validate-yaml":
            return self._answer(200, {"errors": [], "warnings": []})
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(branch|preupload|commit)/([^/]+)", path)
        if method == "POST" and m:
            repo, route, _ = m.groups()
            if route == "branch":
                return self._answer(200, {})
            if route == "preupload":
                files = json.loads(body)["files"]
                return self._answer(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                     "shouldIgnore": False} for f in files]})
            oid = "0" * 40
            return self._answer(200, {"commitUrl": f"{hub.url}/{repo}/commit/{oid}", "commitOid": oid})
        return self._answer(404, {"error": f"no route {method} {path} in the test hub"})


class Hub(ThreadingHTTPServer):
    """A threaded HTTP server on 127.0.0.1 (a free port) that records every request; ``status`` makes every route
    answer with that error instead."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict] = []
        self.status: int | None = None
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def api(self) -> list[dict]:
        """The requests of the upload itself (not huggingface_hub's agent registry)."""
        return [r for r in self.requests if r["path"] != AGENTS]

    def routes(self) -> list[str]:
        return [f"{r['method']} {r['path']}" for r in self.api()]


@pytest.fixture
def hub():
    server = Hub()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def _free_port() -> int:
    """A port nobody listens on: bound, then closed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hub_cli(command: str, *args, endpoint: str, home: Path, token: str | None = TOKEN, timeout: int = 300,
            **env) -> subprocess.CompletedProcess:
    """``posttrain COMMAND ARGS`` in a subprocess with HF_ENDPOINT, an HF_HOME of its own (no login cache) and
    HF_TOKEN (when given); no other HF_ variable of this process (the suite's HF_HUB_OFFLINE) reaches it."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env = {**base, "HF_ENDPOINT": endpoint, "HF_HOME": str(home), **({"HF_TOKEN": token} if token else {}), **env}
    proc = subprocess.run([sys.executable, "-m", "posttrain", command, *map(str, args)], capture_output=True,
                          env=env, timeout=timeout)  # bytes: text mode would make a bar's carriage returns newlines
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def push_cli(*args, **kwargs) -> subprocess.CompletedProcess:
    return hub_cli("push", *args, **kwargs)


def shown(stderr: str) -> list[str]:
    """The lines a terminal shows of ``stderr``: tqdm's transient staging bar (``leave=False``) redraws with
    carriage returns and is wiped, so only the text after a line's last carriage return stays."""
    return [s for line in stderr.split("\n") if (s := line.rsplit("\r", 1)[-1].strip())]


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _with_eval(src: Path, dst: Path, data: Path) -> Path:
    from posttrain.evaluate import run_eval

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("eval", "hub"))
    run_eval(str(dst), str(data), ["qa", "hallucination"], ["seen", "unseen"], limit=8, engine="hf",
             bootstrap_iters=20, progress=False)
    return dst


@pytest.fixture(scope="module")
def lora_run(tiny_lora, tiny_kg, tmp_path_factory):
    """A copy of the tiny LoRA run (its base: the tiny run, a local directory) with ``posttrain eval``'s output."""
    return _with_eval(tiny_lora, tmp_path_factory.mktemp("push") / "lora", tiny_kg)


@pytest.fixture(scope="module")
def full_run(tiny_run, tiny_kg, tmp_path_factory):
    """A copy of the tiny full model run (trained from scratch) with ``posttrain eval``'s output."""
    return _with_eval(tiny_run, tmp_path_factory.mktemp("push") / "full", tiny_kg)


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / run.name))


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _python_block(text: str) -> str:
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def test_dry_run_stages_the_adapter_run_json_eval_and_a_card_the_hub_reads(capsys, lora_run, tiny_run, tmp_path):
    from huggingface_hub import ModelCard

    out = tmp_path / "staged"
    proc = cli(capsys, "push", lora_run, "--repo-id", "me/tiny-lora", "--dry-run", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == f"staged {out}"
    staged, run = files(out), files(lora_run)
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "run.json", "eval/results.json", "eval/samples.jsonl", "eval/report.md", "README.md"} <= set(staged)
    assert not [f for f in staged if f.startswith("train_data") or f.endswith(".bin") or "checkpoint" in f]
    assert {f: b for f, b in staged.items() if f != "README.md"} == {f: run[f] for f in staged if f != "README.md"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary sibling left

    card = ModelCard.load(out / "README.md")
    data = card.data
    assert data.library_name == "peft" and data.pipeline_tag == "text-generation"
    assert {"posttrain", "trl", "sft", "lora"} <= set(data.tags)
    assert data.base_model is None  # the base is a local directory: no Hub id to name (see test_base_model_flag)
    assert data.model_name == "me/tiny-lora"
    card_metrics = {(r.task_name, r.dataset_config, r.dataset_split, r.metric_type): r.metric_value
                    for r in data.eval_results}
    assert all(r.task_type == "text-generation" and r.dataset_type == "kg" for r in data.eval_results)
    expected = {}
    for key, result in json.loads((lora_run / "eval" / "results.json").read_text())["results"].items():
        suite, split = key.split("/")
        for metric, value in result.items():
            if metric != "n" and _finite(value):
                expected[(suite, suite, split, metric)] = value
    assert card_metrics == expected  # every finite metric, and beside each its standard error, exactly
    assert ("qa", "qa", "seen", "exact_match_stderr") in card_metrics
    assert ("hallucination", "hallucination", "seen", "ece_answer_stderr") in card_metrics  # a bootstrap one
    assert "from peft import PeftModel" in card.text and "```yaml\nmethod: sft\n" in card.text
    assert "use_peft: true\n" in card.text and "lora_r: 4\n" in card.text
    metadata = (out / "README.md").read_text().split("\n---\n")[0]
    assert str(tiny_run) not in metadata and str(lora_run) not in metadata  # local paths are no Hub ids
    assert str(tiny_run) in card.text  # the body says where the base model is


def test_a_staged_adapter_loads_with_peft_and_its_usage_snippet_runs(capsys, lora_run, tiny_run, tmp_path):
    import torch
    from huggingface_hub import ModelCard
    from peft import PeftModel

    from posttrain.core import modeling

    out = push(lora_run, "me/tiny-lora", dry_run=tmp_path / "staged", progress=False)
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    staged = PeftModel.from_pretrained(modeling.load_model(str(tiny_run)), str(out)).eval()
    usual = modeling.load_adapter(modeling.load_model(str(tiny_run)), str(lora_run), trainable=False).eval()
    with torch.no_grad():
        assert torch.equal(staged(ids).logits, usual(ids).logits)
    # the card's snippet, with the repository id pointing at the staged folder instead of the Hub
    code = _python_block(ModelCard.load(out / "README.md").text).replace('"me/tiny-lora"', json.dumps(str(out)))
    capsys.readouterr()
    exec(compile(code, "snippet", "exec"), {})
    printed = capsys.readouterr().out.strip()
    tok = modeling.load_tokenizer(str(lora_run))
    prompt = re.search(r'tokenizer\("(.*?)", return_tensors', code).group(1)
    with torch.no_grad():
        greedy = usual.generate(**tok(prompt, return_tensors="pt"), max_new_tokens=16, do_sample=False)
    assert printed == tok.decode(greedy[0], skip_special_tokens=True).strip() and prompt.strip() in printed


def test_base_model_flag_links_the_published_base(capsys, lora_run, tmp_path):
    from huggingface_hub import ModelCard

    out = tmp_path / "staged"
    proc = cli(capsys, "push", lora_run, "--repo-id", "me/tiny-lora", "--base_model", "me/tiny-base",
               "--revision", "v1", "--dry-run", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "me/tiny-base" and card.data.base_model_relation == "adapter"
    code = _python_block(card.text)
    assert 'AutoModelForCausalLM.from_pretrained("me/tiny-base")' in code
    assert 'PeftModel.from_pretrained(base, "me/tiny-lora", revision="v1")' in code


def test_base_model_flag_is_written_into_the_staged_adapter_config(capsys, lora_run, tiny_run, tmp_path):
    """The adapter config names the local base the run was trained from; the pushed one names the Hub id
    ``--base_model`` gives, so PEFT finds the base there. Without the flag it stays local, and the card says so."""
    from huggingface_hub import ModelCard
    from peft import PeftConfig

    run_config = json.loads((lora_run / "adapter_config.json").read_text())
    assert run_config["base_model_name_or_path"] == str(tiny_run)
    out = tmp_path / "staged"
    proc = cli(capsys, "push", lora_run, "--repo-id", "me/tiny-lora", "--base_model", "me/tiny-base", "--dry-run",
               out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    staged = json.loads((out / "adapter_config.json").read_text())
    assert staged == {**run_config, "base_model_name_or_path": "me/tiny-base"}
    assert PeftConfig.from_pretrained(str(out)).base_model_name_or_path == "me/tiny-base"
    assert json.loads((lora_run / "adapter_config.json").read_text()) == run_config  # the run is untouched
    card = ModelCard.load(out / "README.md").text
    assert f"Trained on `{tiny_run}`, published as `me/tiny-base`: `adapter_config.json` names `me/tiny-base`" in card

    plain = push(lora_run, "me/tiny-lora", dry_run=tmp_path / "plain", progress=False)
    assert json.loads((plain / "adapter_config.json").read_text()) == run_config
    assert "`adapter_config.json` names that local path as its `base_model_name_or_path`, so PEFT cannot find the " \
           "base from the Hub" in ModelCard.load(plain / "README.md").text


def test_base_model_flag_naming_another_hub_base_is_refused(capsys, lora_run, tmp_path):
    run = _copy(lora_run, tmp_path)
    config = json.loads((run / "adapter_config.json").read_text())
    (run / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "someorg/base"}))
    out = tmp_path / "staged"
    proc = cli(capsys, "push", run, "--repo-id", "me/tiny-lora", "--base_model", "me/other", "--dry-run", out)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"posttrain: error: --base_model me/other: {run} was trained on the Hub model someorg/base; drop "
        "--base_model (it names where a local base model was published)"]
    assert not out.exists()
    proc = cli(capsys, "push", run, "--repo-id", "me/tiny-lora", "--base_model", "someorg/base", "--dry-run", out)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_merge_stages_a_model_the_pipeline_runs_like_the_run(capsys, lora_run, tiny_run, tmp_path):
    import torch
    from huggingface_hub import ModelCard
    from transformers import pipeline

    from posttrain.core import modeling

    out = tmp_path / "merged"
    proc = cli(capsys, "push", lora_run, "--repo-id", "me/tiny-merged", "--merge", "--dry-run", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    staged = files(out)
    assert {"config.json", "model.safetensors", "tokenizer.json", "run.json", "eval/results.json"} <= set(staged)
    assert not {"adapter_config.json", "adapter_model.safetensors"} & set(staged)
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers" and "lora" in card.data.tags
    assert 'pipeline("text-generation", model="me/tiny-merged")' in _python_block(card.text)

    prompts = [json.loads(line)["prompt"] for line in (lora_run / "eval" / "samples.jsonl").read_text().splitlines()]
    prompts = list(dict.fromkeys(prompts))[:4]
    generator = pipeline("text-generation", model=str(out), device="cpu")
    tok = modeling.load_tokenizer(str(lora_run))
    usual = modeling.load_adapter(modeling.load_model(str(tiny_run)), str(lora_run), trainable=False).eval()
    for prompt in prompts:
        got = generator(prompt, max_new_tokens=12, do_sample=False, return_full_text=False)[0]["generated_text"]
        inputs = tok(prompt, return_tensors="pt")
        with torch.no_grad():
            ids = usual.generate(**inputs, max_new_tokens=12, do_sample=False)[0, inputs["input_ids"].shape[1]:]
        assert got == tok.decode(ids, skip_special_tokens=True)


def test_a_full_model_run_gets_a_transformers_card_and_merge_is_refused(capsys, full_run, tmp_path):
    from huggingface_hub import ModelCard

    out = push(full_run, "me/tiny-base", dry_run=tmp_path / "staged", progress=False)
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "run.json",
            "eval/results.json", "README.md"} <= set(files(out))
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers" and card.data.base_model is None
    assert "trained from scratch" in card.text and "from_scratch: true" in card.text
    assert "lora" not in card.data.tags
    proc = cli(capsys, "push", full_run, "--repo-id", "me/x", "--merge", "--dry-run", tmp_path / "merged")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"posttrain: error: --merge: {full_run} is a full model, not a LoRA adapter; there is nothing to merge "
        "(push it without --merge)"]
    assert not (tmp_path / "merged").exists()


def test_hub_ids_and_local_paths(tmp_path, full_run):
    assert hub_id("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B" and hub_id("gpt2") == "gpt2"
    for local in ("runs/testbed/kg", "/abs/model", "./base", "tofu/forget10.json", str(full_run), None, ""):
        assert hub_id(local) is None, local
    (tmp_path / "org" / "base").mkdir(parents=True)
    assert hub_id("org/base", cwd=tmp_path) is None  # a directory where training ran
    # a run from a Hub model on Hub data: both named in the metadata
    info = json.loads((full_run / "run.json").read_text())
    info["config"].update(from_scratch=False, model_name_or_path="someorg/base-model",
                          dataset_path="forget=someorg/facts,retain=local/retain.json")
    info["command"] = ["posttrain", "train", "recipe.yaml", "--learning_rate", "1e-4", "--hub_token=x"]
    card = model_card(full_run, info, "me/tuned", kind="model", merged=False)
    assert card.data.base_model == "someorg/base-model" and card.data.base_model_relation == "finetune"
    assert card.data.datasets == ["someorg/facts"]
    settings = recipe_settings(info)
    assert "learning_rate" in settings and "output_dir" not in settings and "hub_token" not in settings


@pytest.mark.parametrize("case, message", [
    ("missing", "run directory not found"),
    ("not_a_run", "is not a posttrain run directory (no run.json)"),
    ("bad_repo", "bad --repo-id 'bad id/x'"),
    ("no_namespace", "bad --repo-id 'tiny': expected ORG/NAME"),
    ("bad_base", "bad --base_model 'a/b/c'"),
    ("into_the_run", "would replace the run"),
    ("existing", "already exists; give --overwrite_output_dir to replace it"),
])
def test_bad_input_is_one_line_and_stages_nothing(capsys, lora_run, tmp_path, case, message):
    out, run, repo, extra = tmp_path / "staged", lora_run, "me/tiny", []
    if case == "missing":
        run = tmp_path / "nothing"
    elif case == "not_a_run":
        run = tmp_path / "plain"
        run.mkdir()
        (run / "config.json").write_text("{}")
    elif case == "bad_repo":
        repo = "bad id/x"
    elif case == "no_namespace":
        repo = "tiny"
    elif case == "bad_base":
        extra = ["--base_model", "a/b/c"]
    elif case == "into_the_run":
        out = lora_run.parent
    elif case == "existing":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    before = files(out) if out.is_dir() else None
    proc = cli(capsys, "push", run, "--repo-id", repo, *extra, "--dry-run", out)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("posttrain: error: ") and message in proc.stderr
    assert (files(out) if out.is_dir() else None) == before
    if case == "existing":
        proc = cli(capsys, "push", run, "--repo-id", repo, "--dry-run", out, "--overwrite_output_dir")
        assert proc.returncode == 0 and (out / "README.md").is_file() and not (out / "keep.txt").exists()


@pytest.mark.parametrize("which", ["lora", "full"])
def test_upload_sends_every_staged_file_with_the_token(hub, lora_run, full_run, tmp_path, which):
    """The LoRA run to a private repository's branch; the full model to main with the Hub's default visibility."""
    run = _copy(lora_run if which == "lora" else full_run, tmp_path)
    options = ["--private", "--revision", "dev", "--commit_message", "tiny lora, first push"] if which == "lora" \
        else []
    proc = push_cli(run, "--repo-id", "me/tiny", *options, endpoint=hub.url, home=tmp_path / "home")
    assert proc.returncode == 0, proc.stderr[-3000:]
    staged = run / "hub"
    assert proc.stdout.splitlines() == [f"staged {staged}", f"pushed to {hub.url}/me/tiny"
                                        + ("/tree/dev" if which == "lora" else "")]
    revision = "dev" if which == "lora" else "main"
    routes = hub.routes()
    assert routes[0] == "POST /api/repos/create" and routes[-1] == f"POST /api/models/me/tiny/commit/{revision}"
    assert ("POST /api/models/me/tiny/branch/dev" in routes) == (which == "lora")
    assert f"POST /api/models/me/tiny/preupload/{revision}" in routes
    assert all(r["auth"] == f"Bearer {TOKEN}" for r in hub.api())
    create = json.loads(hub.api()[0]["body"])
    assert create["name"] == "tiny" and create["organization"] == "me" and create["type"] == "model"
    assert create.get("visibility") == ("private" if which == "lora" else None)

    lines = [json.loads(line) for line in hub.api()[-1]["body"].decode().splitlines()]
    header, *ops = lines
    assert header == {"key": "header", "value": {
        "summary": "tiny lora, first push" if which == "lora" else f"Upload run {run.name} with posttrain push",
        "description": ""}}
    assert all(op["key"] == "file" and op["value"]["encoding"] == "base64" for op in ops)
    sent = {op["value"]["path"]: base64.b64decode(op["value"]["content"]) for op in ops}
    assert sent == files(staged)  # every staged file, byte for byte, and nothing else
    assert ("adapter_model.safetensors" in sent) == (which == "lora")
    assert not [f for f in sent if f.startswith("train_data") or f == "training_args.bin"]
    assert TOKEN not in proc.stdout + proc.stderr
    assert not [f for f, b in sent.items() if TOKEN.encode() in b]
    assert TOKEN not in (run / "run.json").read_text()


def test_dry_run_makes_no_network_call(hub, lora_run, tmp_path):
    run = _copy(lora_run, tmp_path)
    proc = push_cli(run, "--repo-id", "me/tiny", "--dry-run", tmp_path / "staged", endpoint=hub.url,
                    home=tmp_path / "home")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "staged" / "README.md").is_file() and hub.requests == []
    assert not (run / "hub").exists()


@pytest.mark.parametrize("case, message", [
    ("no_token", "no Hugging Face token: set HF_TOKEN or log in with `hf auth login`"),
    ("offline", "HF_HUB_OFFLINE is set: unset it to upload"),
    ("unreachable", "cannot reach the Hub at http://127.0.0.1:"),
    (401, "rejected the token (401 Unauthorized)"),
    (403, "refused to write to me/tiny (403 Forbidden)"),
])
def test_upload_failures_are_one_line_and_keep_the_staged_folder(hub, lora_run, tmp_path, case, message):
    run = _copy(lora_run, tmp_path)
    endpoint, token, env = hub.url, TOKEN, {}
    if case == "no_token":
        token = None  # and HF_HOME is an empty directory: no login cache either
    elif case == "offline":
        env = {"HF_HUB_OFFLINE": "1"}
    elif case == "unreachable":
        endpoint = f"http://127.0.0.1:{_free_port()}"
    else:
        hub.status = case
    proc = push_cli(run, "--repo-id", "me/tiny", endpoint=endpoint, home=tmp_path / "home", token=token, **env)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = shown(proc.stderr)  # what is left on the terminal: one line
    assert len(lines) == 1 and lines[0].startswith("posttrain: error: ") and message in lines[0], proc.stderr
    assert f"the staged files are kept in {run / 'hub'}" in proc.stderr
    assert TOKEN not in proc.stdout + proc.stderr
    staged = files(run / "hub")
    assert staged["adapter_model.safetensors"] == (run / "adapter_model.safetensors").read_bytes()
    assert staged["run.json"] == (run / "run.json").read_bytes() and "README.md" in staged
    if isinstance(case, int):
        assert hub.routes()[0] == "POST /api/repos/create" and not [r for r in hub.routes() if "/commit/" in r]
        assert all(r["auth"] == f"Bearer {TOKEN}" for r in hub.api())
    elif case != "unreachable":
        assert hub.requests == []


@pytest.mark.slow
def test_push_to_hub_in_a_recipe_pushes_the_finished_run_once(hub, tiny_run, tiny_kg, tmp_path):
    """TRL's ``push_to_hub`` / ``hub_model_id`` / ``hub_private_repo``: the finished run goes up as `posttrain push`
    sends it, once (no per-checkpoint pushes), and a missing token stops the run before any training."""
    out = tmp_path / "run"
    flags = ["testbed/base.yaml", "--from_scratch", "false", "--model_name_or_path", tiny_run, "--dataset_path",
             tiny_kg, "--output_dir", out, "--use_peft", "true", "--lora_r", "4", "--max_steps", "2",
             "--save_strategy", "steps", "--save_steps", "1", "--push_to_hub", "true", "--hub_model_id", "me/trained",
             "--hub_private_repo", "true"]
    proc = hub_cli("train", *flags, endpoint=hub.url, home=tmp_path / "home", token=None, timeout=600)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "posttrain: error: push_to_hub: no Hugging Face token (set HF_TOKEN, or run `hf auth login`)"]
    assert not out.exists() and hub.routes() == []
    proc = hub_cli("train", *flags, endpoint=hub.url, home=tmp_path / "home", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    routes = [r for r in hub.routes() if "/commit/" in r]
    assert routes == ["POST /api/models/me/trained/commit/main"]
    assert json.loads(hub.api()[0]["body"]).get("visibility") == "private"
    ops = [json.loads(line) for line in hub.api()[-1]["body"].decode().splitlines()][1:]
    assert {op["value"]["path"] for op in ops} == set(files(out / "hub"))
    assert {"adapter_model.safetensors", "README.md", "run.json"} <= set(files(out / "hub"))
    info = json.loads((out / "run.json").read_text())
    assert info["hub"] == {"repo_id": "me/trained", "private": True, "revision": None}
    assert TOKEN not in proc.stdout + proc.stderr + (out / "run.json").read_text()


@pytest.mark.parametrize("repo_id, message", [("", "push_to_hub needs hub_model_id ORG/NAME"),
                                              ("me/a/b", "bad hub_model_id 'me/a/b'")])
def test_a_bad_hub_model_id_is_refused_before_training(capsys, tiny_kg, tmp_path, repo_id, message):
    proc = cli(capsys, "train", "testbed/base.yaml", "--dataset_path", tiny_kg, "--output_dir", tmp_path / "run",
               "--max_steps", "1", "--push_to_hub", "true", "--hub_model_id", repo_id)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"posttrain: error: {message}")
    assert list(tmp_path.iterdir()) == []
