"""The study's hub models, real configs and tokenizers with random weights (layers cut): OPT's
functional dropout, its `</s>` prefix and `<pad>`, DeBERTa-v3's sentencepiece tokenizer and
the explicit 512-token cut; and the hub code path itself, through a local hub cache offline."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from alignscope.data import DataConfig
from alignscope.generate import GenerateConfig, generate_answers
from alignscope.judges import RewardModel, encode_pair
from alignscope.models import load_causal_lm, load_tokenizer
from alignscope.train import DPOSettings, LoraSettings, TrainConfig, TrainingSettings, train
from conftest import ROOT, write_hh
from hub import OA_REF, OA_REPO, OA_SHA, OPT_REPO, OPT_SHA, hub_cache, openassistant_rm, opt350m
from tiny import hh_pairs


@pytest.fixture(scope="module")
def opt(tmp_path_factory):
    return opt350m(tmp_path_factory.mktemp("opt") / "opt-350m")


@pytest.fixture(scope="module")
def rm(tmp_path_factory):
    return openassistant_rm(tmp_path_factory.mktemp("oa") / "rm")


def test_the_opt_tokenizer_prepends_its_eos_and_pads_with_pad(opt):
    tok = load_tokenizer(str(opt))
    ids = tok("Human: Hi").input_ids
    assert ids[0] == tok.eos_token_id == tok.bos_token_id == 2  # </s> before every encoding
    assert tok.pad_token == "<pad>" and tok.pad_token_id == 1 != tok.eos_token_id
    assert tok.unk_token == tok.eos_token  # OPT's unk is </s> too: never chosen as the pad


def dpo_step_zero(opt, tmp_path, disable_dropout: bool) -> dict:
    write_hh(tmp_path / "data", "harmless-base", "train", hh_pairs(4))
    cfg = TrainConfig(method="dpo", model=str(opt), output_dir=str(tmp_path / f"dpo-{disable_dropout}"),
                      data=DataConfig(source=str(tmp_path / "data"), subsets=["harmless-base"]), lora=LoraSettings(),
                      dpo=DPOSettings(disable_dropout=disable_dropout),
                      training=TrainingSettings(max_steps=1, per_device_batch_size=2, gradient_accumulation_steps=1,
                                                precision="fp32", logging_steps=1, learning_rate=1e-5))
    return next(x for x in train(cfg).log_history if "loss" in x)


def test_dpo_on_opt_scores_policy_and_reference_without_dropout(opt, tmp_path):
    """With a zero-initialised LoRA the policy is the reference: DPO's first loss must be ln 2 and
    every reward 0. OPT's dropout is functional (no nn.Dropout module for TRL to switch off)."""
    step = dpo_step_zero(opt, tmp_path, disable_dropout=True)
    assert step["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert step["rewards/chosen"] == pytest.approx(0, abs=1e-6) and step["rewards/margins"] == pytest.approx(0, abs=1e-6)
    done = json.loads((tmp_path / "dpo-True" / "done.json").read_text())
    assert done["dropout_disabled"] is True
    # what TRL alone gives: independent dropout masks on policy and reference
    noisy = dpo_step_zero(opt, tmp_path, disable_dropout=False)
    assert abs(noisy["loss"] - math.log(2)) > 1e-4 and abs(noisy["rewards/chosen"]) > 1e-4


@pytest.mark.slow
def test_sft_on_the_real_opt_learns_to_end_its_reply_with_eos(tmp_path):
    model_dir = opt350m(tmp_path / "opt-1layer", layers=1)
    write_hh(tmp_path / "data", "harmless-base", "train", hh_pairs(16))
    result = train(TrainConfig(method="sft", model=str(model_dir), output_dir=str(tmp_path / "sft"),
                               data=DataConfig(source=str(tmp_path / "data"), subsets=["harmless-base"]),
                               training=TrainingSettings(epochs=6, learning_rate=1e-3, per_device_batch_size=4,
                                                         gradient_accumulation_steps=1, precision="fp32",
                                                         logging_steps=1)))
    model, tok = load_causal_lm(str(result.model_dir))[0], load_tokenizer(str(result.model_dir))
    answer = generate_answers(model, tok, ["Human: How do I bake bread? (0)\n\nAssistant:"],
                              GenerateConfig(max_new_tokens=20))[0]
    assert answer.stop == "eos" and answer.response == "Sure, here is how."


def test_batched_generation_on_the_real_opt_tokenizer_equals_one_at_a_time(opt):
    model, tok = load_causal_lm(str(opt))[0], load_tokenizer(str(opt))
    prompts = ["Human: What is the capital of France?", "Human: Hi\n\nAssistant:",
               "Human: " + "Tell me about the sea. " * 20 + "\n\nAssistant:"]
    got = generate_answers(model, tok, prompts, GenerateConfig(max_new_tokens=12, stop_at_human_turn=False))
    for prompt, answer in zip(prompts, got):
        x = tok(prompt, return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(**x, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
        assert answer.token_ids == ids[0, x.input_ids.shape[1]:].tolist()


def test_openassistant_tokenizer_needs_the_explicit_cut_and_keeps_the_answer_whole(rm):
    judge = RewardModel(str(rm))
    tok = judge.tokenizer
    assert type(tok).__name__.startswith("DebertaV2") and tok.model_max_length > 1e29  # nothing would cut at 512
    question = "Human: " + "Please tell me everything about the history of the sea. " * 60
    answer = "The sea is old."
    assert len(tok(question, answer).input_ids) > 512
    pair = encode_pair(tok, question, answer, 512)
    answer_ids = tok(answer, add_special_tokens=False).input_ids
    assert len(pair.ids) == 512 and pair.ids[0] == tok.cls_token_id and pair.ids[-1] == tok.sep_token_id
    assert pair.ids[-len(answer_ids) - 1:-1] == answer_ids and pair.answer_tokens_cut == 0
    question_ids = tok(question, add_special_tokens=False).input_ids
    assert pair.ids[1:512 - len(answer_ids) - 2] == question_ids[-(512 - len(answer_ids) - 3):]  # its end kept
    ratings, cuts = judge.rate([question, "Human: Hi"], [answer, "Hello."], batch_size=2)
    single = [judge.rate([q], [a], batch_size=1)[0][0] for q, a in ((question, answer), ("Human: Hi", "Hello."))]
    assert ratings == pytest.approx(single, abs=1e-4) and cuts == [0, 0]


def test_the_hub_path_offline_loads_the_pinned_safetensors_revisions(opt, rm, tmp_path):
    """`facebook/opt-350m` and OpenAssistant's judge by hub id, with HF_HUB_OFFLINE=1 and a local hub
    cache whose `main` holds only pickled weights, as on the hub: each resolves to the revision
    that holds safetensors, and the fingerprint records the commit the weights came from."""
    pickled = tmp_path / "pickle-only"
    pickled.mkdir()
    for f in ("config.json", "tokenizer_config.json"):
        (pickled / f).write_text((opt / f).read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"a pickle that must never be loaded")
    hub_cache(tmp_path / "hf", OPT_REPO, "1" * 40, pickled)
    hub_cache(tmp_path / "hf", OPT_REPO, OPT_SHA, opt, ref=None, main=False)
    hub_cache(tmp_path / "hf", OA_REPO, "2" * 40, pickled)
    hub_cache(tmp_path / "hf", OA_REPO, OA_SHA, rm, ref=OA_REF, main=False)
    code = f"""
import json
from alignscope.judges import RewardModel
from alignscope.models import load_causal_lm, load_tokenizer, model_fingerprint
model, resolved = load_causal_lm({OPT_REPO!r})
tok = load_tokenizer(resolved)
judge = RewardModel({OA_REPO!r})
print(json.dumps({{"opt": model_fingerprint({OPT_REPO!r}), "oa": model_fingerprint({OA_REPO!r}),
                  "main": model_fingerprint({OPT_REPO!r}, "main"),
                  "layers": model.config.num_hidden_layers, "pad": tok.pad_token,
                  "rating": judge.rate(["Human: Hi"], ["Hello."])[0][0]}}))
"""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "ALIGNSCOPE_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["opt"] == f"hub:{OPT_REPO}@{OPT_SHA}" and out["oa"] == f"hub:{OA_REPO}@{OA_SHA}"
    assert out["main"] == f"hub:{OPT_REPO}@{'1' * 40}"  # main is there, and it is not what loaded
    assert out["layers"] == 2 and out["pad"] == "<pad>" and math.isfinite(out["rating"])
    # main itself, with safetensors only, is refused: nothing falls back to the pickle
    main = subprocess.run([sys.executable, "-c", f"from alignscope.models import load_causal_lm; "
                                                 f"load_causal_lm({OPT_REPO!r}, revision='main')"],
                          env=env, capture_output=True, text=True, cwd=ROOT)
    assert main.returncode != 0 and "could not load model 'facebook/opt-350m' at revision 'main'" in main.stderr


FAKE_HUB = """
import json, os, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Hub(BaseHTTPRequestHandler):
    # answers as the hub does: a model's info for opt-125m (at a commit its pin does not name), 401 for the rest
    def do_GET(self):
        if "/api/models/facebook/opt-125m/" in self.path:
            self.send_response(200)
            body = json.dumps({"id": "facebook/opt-125m", "sha": "9" * 40}).encode()
        else:
            self.send_response(401)
            body = json.dumps({"error": "Invalid credentials in Authorization header"}).encode()
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
threading.Thread(target=server.serve_forever, daemon=True).start()
os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{server.server_port}"
from alignscope.data import resolve_file
from alignscope.io import InputError
from alignscope.models import hub_commit
calls = {"judge": lambda: hub_commit("OpenAssistant/reward-model-deberta-v3-large-v2", "refs/pr/3"),
         "moved pin": lambda: hub_commit("facebook/opt-125m", "refs/pr/35"),
         "data": lambda: resolve_file("hub", "harmless-base", "test")}
out = {}
for name, call in calls.items():
    try:
        out[name] = "ok " + str(call())
    except InputError as e:
        out[name] = str(e)
server.shutdown()
print(json.dumps(out))
"""


def test_a_hub_that_answers_no_is_not_read_as_no_network_and_a_moved_pin_is_refused(rm, tmp_path):
    """A hub on loopback answering 401 (as it does to a bad token): the error says so, instead of
    falling back to the local cache (where the judge is) or advising a local copy for lack of
    network. A pinned refs/pr branch found at another commit is refused, naming both."""
    hub_cache(tmp_path / "hf", OA_REPO, OA_SHA, rm, ref=OA_REF)  # cached: a fallback would have found it
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"} | {"HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run([sys.executable, "-c", FAKE_HUB], env=env, capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert "401 Unauthorized" in out["judge"] and "cache" not in out["judge"], out["judge"]
    assert out["moved pin"].startswith("hub model 'facebook/opt-125m': its branch 'refs/pr/35' now points at "
                                       f"commit {'9' * 40}, not at 1f44ae8")
    assert out["data"].startswith("the hub refused Anthropic/hh-rlhf/harmless-base/test.jsonl.gz") \
        and "401 Unauthorized" in out["data"] and "no network" not in out["data"]
