"""End-to-end training on the tiny model: it learns, saves, resumes exactly, and keeps one copy of the policy."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import open_dict

from alignlab.train import run_train


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def column(rows, key):
    return [float(r[key]) for r in rows if r.get(key)]


def test_training_changes_parameters_and_raises_val_accuracy(make_cfg):
    cfg = make_cfg("optimizer.lr=3e-3", "trainer.max_steps=-1", "trainer.max_epochs=2", "data.prompts.max_train=null",
                   "data.prompts.max_val=null", "data.batch_size=16", "save_policy=true")
    from alignlab.models import tiny_random

    initial = {k: v.clone() for k, v in tiny_random(cfg.model.tokenizer).model.state_dict().items()}
    metrics, objects = run_train(cfg)
    trained = objects["module"].policy.state_dict()
    assert any(not torch.equal(initial[k], trained[k]) for k in initial)

    rows = read_metrics(objects["output_dir"])
    val_acc, val_loss = column(rows, "val/rewards/accuracies"), column(rows, "val/loss")
    assert len(val_acc) == 3  # before training and after each epoch
    assert val_acc[0] == 0.0 and val_acc[-1] > 0.75, val_acc  # policy == reference at first: no pair ranked
    assert val_loss[-1] < val_loss[0] - 0.05, val_loss
    assert metrics["val/rewards/margins"] > 0

    out = objects["output_dir"]
    for name in ("config.yaml", "metrics.csv", "data_report.json", "summary.json", "checkpoints/last.ckpt",
                 "policy/config.json"):
        assert (out / name).exists(), name
    # The saved policy reloads anywhere and is the trained one.
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(out / "policy")
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(reloaded.state_dict()[name], trained[f"{name}"])


def test_checkpoint_holds_the_policy_once_and_reference_logps(make_cfg):
    _, objects = run_train(make_cfg())
    checkpoint = torch.load(objects["output_dir"] / "checkpoints" / "last.ckpt", weights_only=False)
    keys = list(checkpoint["state_dict"])
    assert keys and all(k.startswith("policy.") for k in keys)
    assert checkpoint["reference_logps"].shape == (24, 2)


def test_precomputed_and_live_reference_give_the_same_losses(make_cfg):
    runs = {}
    for precompute in (True, False):
        cfg = make_cfg(f"objective.module.precompute_reference={precompute}", "trainer.max_steps=3")
        with open_dict(cfg):
            cfg.paths.output_dir += f"-{precompute}"
        _, objects = run_train(cfg)
        runs[precompute] = column(read_metrics(objects["output_dir"]), "train/loss")
    assert runs[True] == pytest.approx(runs[False], abs=1e-5)


def test_every_forward_layout_trains_alike(make_cfg):
    runs = {}
    for layout in ("packed", "shared_prompt", "concatenated"):
        cfg = make_cfg(f"objective.module.layout={layout}", "trainer.max_steps=3")
        with open_dict(cfg):
            cfg.paths.output_dir += f"-{layout}"
        _, objects = run_train(cfg)
        runs[layout] = column(read_metrics(objects["output_dir"]), "train/loss")
    assert runs["packed"] == pytest.approx(runs["concatenated"], abs=1e-4)
    assert runs["shared_prompt"] == pytest.approx(runs["concatenated"], abs=1e-4)


def test_resume_continues_with_the_same_losses(make_cfg, tmp_path):
    every3 = ["trainer.max_steps=6", "trainer.max_epochs=2", "callbacks.checkpoint.every_n_train_steps=3", "callbacks.checkpoint.save_top_k=-1"]
    cfg = make_cfg(*every3)
    _, full = run_train(cfg)
    straight = column(read_metrics(full["output_dir"]), "train/loss")
    step3 = full["output_dir"] / "checkpoints" / "step000003.ckpt"

    resumed_cfg = make_cfg(*every3, f"ckpt_path={step3}")
    with open_dict(resumed_cfg):
        resumed_cfg.paths.output_dir = str(tmp_path / "resumed")
    _, resumed = run_train(resumed_cfg)
    after = column(read_metrics(resumed["output_dir"]), "train/loss")
    assert len(straight) == 6 and len(after) == 3
    assert after == pytest.approx(straight[3:], abs=1e-6)


def test_lora_reference_is_the_disabled_adapter(make_cfg):
    cfg = make_cfg("+model.lora={r:4,lora_alpha:8,target_modules:[q_proj,v_proj]}", "optimizer.lr=1e-2",
                   "objective.module.precompute_reference=false", "save_policy=true")
    _, objects = run_train(cfg)
    module = objects["module"]
    assert module.reference.kind == "adapter"  # no frozen copy: the policy with its adapter disabled
    # The reference (adapter disabled) is still the untouched base model, while the trained policy moved.
    from alignlab.logprobs import pair_logps
    from alignlab.models import tiny_random

    batch = next(iter(objects["datamodule"].val_dataloader()))
    base = pair_logps(tiny_random(cfg.model.tokenizer).model.eval(), batch)
    reference = module.reference_pair_logps(batch)
    with torch.no_grad():
        policy = pair_logps(module.policy.eval(), batch)
    assert torch.allclose(reference.chosen, base.chosen, atol=1e-4)
    assert not torch.allclose(policy.chosen, base.chosen, atol=1e-3)
    assert (objects["output_dir"] / "policy" / "adapter_config.json").exists()
    checkpoint = torch.load(objects["output_dir"] / "checkpoints" / "last.ckpt", weights_only=False)
    unique = {v.untyped_storage().data_ptr(): v.numel() for v in checkpoint["state_dict"].values()}
    assert sum(unique.values()) < 3_400_000  # one copy of the 3.2M weights (tied embeddings stored once)


def test_reference_free_loss_loads_no_reference(make_cfg):
    _, objects = run_train(make_cfg("loss=reference_free"))
    assert objects["module"].reference.kind == "none" and objects["module"].reference.table is None


def run_cli(*args, cwd: Path, entry: str = "alignlab.cli") -> subprocess.CompletedProcess:
    code = f"import sys; from {entry} import train; sys.argv[0] = 'alignlab-train'; train()"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def test_multirun_writes_four_separate_runs(tmp_path):
    result = run_cli("-m", "debug=fast", "loss=sigmoid,ipo", "loss.beta=0.05,0.1", f"paths.root={tmp_path}",
                     "trainer.max_steps=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(p.parent for p in tmp_path.glob("multirun/*/*/*/metrics.csv"))
    assert len(runs) == 4 and len({p.name for p in runs}) == 4
    seen = {(json.loads((p / "summary.json").read_text())["output_dir"]) for p in runs}
    assert len(seen) == 4
    names = {p.name for p in runs}
    assert any("loss=ipo" in n and "loss.beta=0.05" in n for n in names)


def test_an_api_key_given_in_config_is_written_nowhere(tmp_path):
    secret = "sk-test-secret-4b1d"
    result = run_cli("-m", "debug=fast", "loss=sigmoid,ipo", f"+judge.api_key={secret}", f"paths.root={tmp_path}",
                     "trainer.max_steps=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [p.parent for p in tmp_path.glob("multirun/**/config.yaml")]
    assert len(runs) == 2 and all(yaml.safe_load((r / "config.yaml").read_text())["judge"]["api_key"] is None
                                  for r in runs)
    summary = json.loads(next(tmp_path.glob("multirun/**/sweep_summary.json")).read_text())
    assert "judge.api_key=<redacted>" in json.dumps(summary)
    leaked = [str(p) for p in tmp_path.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    leaked += [str(p) for p in tmp_path.rglob("*") if secret in p.name]
    assert leaked == []


def test_bad_row_fails_in_one_line_naming_file_and_line(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n{not json\n")
    result = run_cli("debug=fast", f"data.prompts.path={data}", "data.prompts.on_bad_row=error", f"paths.root={tmp_path}",
                     cwd=tmp_path)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("alignlab: error:") and f"{data}:2: malformed JSON" in last


def test_bad_config_key_fails_naming_it(tmp_path):
    result = run_cli("debug=fast", "loss.betta=0.1", f"paths.root={tmp_path}", cwd=tmp_path)
    assert result.returncode != 0 and "loss.betta" in result.stderr
    result = run_cli("debug=fast", "+loss.gamma=0.1", f"paths.root={tmp_path}", cwd=tmp_path)
    assert result.returncode == 2 and "takes no parameter ['gamma']" in result.stderr


def test_gradient_clipping_bounds_the_policy_gradient_norm(make_cfg):
    _, objects = run_train(make_cfg("trainer.max_steps=1"))
    module, trainer = objects["module"], objects["trainer"]
    params = [p for p in module.policy.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.full_like(p, 3.0)
    module.configure_gradient_clipping(trainer.optimizers[0], gradient_clip_val=0.5, gradient_clip_algorithm="norm")
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.double()) for p in params]))
    assert norm == pytest.approx(0.5, rel=1e-2)  # torch sums 3M squares in fp32: ~0.1% off


def test_gradient_checkpointing_falls_back_from_the_kv_cache_layout(make_cfg):
    metrics, objects = run_train(make_cfg("model.gradient_checkpointing=true", "objective.module.layout=shared_prompt"))
    assert objects["module"].layout == "packed"
    assert metrics["train/loss"] > 0


def test_resume_into_the_same_folder_keeps_earlier_metrics(make_cfg):
    cfg = make_cfg("trainer.max_steps=2", "trainer.max_epochs=3")
    _, first = run_train(cfg)
    earlier = (first["output_dir"] / "metrics.csv").read_text()
    resumed = make_cfg("trainer.max_steps=4", "trainer.max_epochs=3", "ckpt_path=last")
    with open_dict(resumed):
        resumed.paths.output_dir = str(first["output_dir"])
    run_train(resumed)
    assert (first["output_dir"] / "metrics.before-resume-1.csv").read_text() == earlier
    assert len(column(read_metrics(first["output_dir"]), "train/loss")) == 2  # steps 3 and 4
