"""The training loop on the tiny corpus: it learns, it resumes, DDP ranks agree."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from detector.image import ImageError
from detector.models import HEADS
from training.config import load_config
from training.datasets import Sample
from training.train import BalancedSampler, Trainer, _lr_lambda, train

pytestmark = pytest.mark.integration

FAST = [
    "model=mobilenetv3_small",
    "input_size=64",
    "batch_size=8",
    "workers=0",
    "pretrained=null",
    "warmup_steps=1",
]


def _config(tiny_corpus, out, *extra):
    return load_config(None, [f"data={tiny_corpus / 'manifest.csv'}", f"out={out}", *FAST, *extra])


@pytest.mark.parametrize("head", HEADS)
def test_a_few_steps_lower_the_loss(tiny_corpus, tmp_path, head):
    trainer = Trainer(
        _config(
            tiny_corpus,
            tmp_path / "run",
            "lr=0.003",
            "max_steps=12",
            "augment.p_jpeg=0",
            "augment.p_blur=0",
            f"head={head}",
        )
    )
    assert trainer.spec.head == head
    x, y = next(iter(trainer.loader))

    def loss() -> float:
        # Train mode (batch statistics, as the optimiser sees them), same dropout mask each time;
        # eval mode would judge BatchNorm running averages that 12 steps cannot settle.
        trainer.model.train()
        torch.manual_seed(0)
        with torch.no_grad():
            logits = trainer.model(x).squeeze(1)
            return float(torch.nn.functional.binary_cross_entropy_with_logits(logits, y))

    before = loss()
    trainer.net.train()
    for _ in range(12):
        trainer.train_step(x, y)
    assert loss() < before * 0.8


def test_several_tiles_an_image_train_on_their_mean_logit(tiny_corpus, tmp_path):
    one = Trainer(_config(tiny_corpus, tmp_path / "one", "max_steps=4"))
    two = Trainer(_config(tiny_corpus, tmp_path / "two", "max_steps=4", "tiles_per_image=2"))
    x, y = next(iter(two.loader))
    tile = next(iter(one.loader))[0].shape[1:]
    assert x.shape == (4, 2, *tile) and y.shape == (4,)  # 8 tiles a batch: 4 images of 2
    assert not torch.equal(x[:, 0], x[:, 1])  # two places in each image
    assert two.steps_per_epoch == one.steps_per_epoch  # the same tiles an epoch
    # the loss is the image's: binary cross-entropy of the mean of its tiles' logits
    two.model.eval()  # no dropout, fixed batch-norm statistics: the same logits twice
    with torch.no_grad():
        z = two.model(x.flatten(0, 1)).view(4, 2)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(z.mean(1), y)
    assert two.train_step(x, y) == pytest.approx(float(expected), rel=1e-5)
    assert float(expected) != pytest.approx(
        float(torch.nn.functional.binary_cross_entropy_with_logits(z, y[:, None].expand(4, 2)))
    )
    with pytest.raises(ValueError, match="tiles_per_image"):
        _config(tiny_corpus, tmp_path / "bad", "tiles_per_image=3")  # 8 tiles a batch


def test_lr_schedule_can_start_late():
    plain, late = _lr_lambda(10, 100), _lr_lambda(10, 100, start=30)
    assert [plain(s) for s in (0, 9)] == [0.1, 1.0] and plain(55) == pytest.approx(0.5)
    assert plain(100) == pytest.approx(0.0)
    assert [late(s) for s in (0, 29)] == [0.0, 0.0]
    assert [late(s) for s in (30, 39)] == [0.1, 1.0]  # warmup from the start step
    assert late(70) == pytest.approx(0.5) and late(100) == pytest.approx(0.0)  # same end
    assert [_lr_lambda(10, 100, start=0)(s) for s in range(101)] == [plain(s) for s in range(101)]


def test_backbone_frozen_then_thawed_at_its_own_lr(tiny_corpus, tmp_path):
    trainer = Trainer(
        _config(
            tiny_corpus, tmp_path / "run", "lr=0.003", "max_steps=6",
            "freeze_backbone_steps=2", "backbone_lr_scale=0.5",
        )
    )  # fmt: skip
    by_kind = {g["backbone"]: g for g in trainer.opt.param_groups if g["params"]}
    assert by_kind[True]["initial_lr"] == pytest.approx(0.0015)
    assert by_kind[False]["initial_lr"] == pytest.approx(0.003)
    backbone, head = trainer.model.backbone, trainer.model.head
    x, y = next(iter(trainer.loader))

    def weights(module):
        return [p.detach().clone() for p in module.parameters()]

    bb0, head0 = weights(backbone), weights(head)
    trainer.net.train()
    trainer.train_step(x, y)
    trainer.train_step(x, y)
    assert all(torch.equal(a, b) for a, b in zip(bb0, weights(backbone), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(head0, weights(head), strict=True))
    assert not trainer.backbone_frozen and all(p.requires_grad for p in backbone.parameters())
    trainer.train_step(x, y)
    assert not all(torch.equal(a, b) for a, b in zip(bb0, weights(backbone), strict=True))
    # The backbone's schedule starts at the thaw (warmup_steps=1: already at the top of its
    # cosine, which ends with the head's at step 6); the head's is 2 of its 5 steps down.
    lrs = {g["backbone"]: g["lr"] for g in trainer.opt.param_groups if g["params"]}
    assert lrs[True] == pytest.approx(0.0015)
    assert lrs[False] == pytest.approx(0.003 * 0.5 * (1 + np.cos(np.pi * 2 / 5)))
    with pytest.raises(ValueError, match="frozen for the whole run"):
        Trainer(_config(tiny_corpus, tmp_path / "run2", "max_steps=2", "freeze_backbone_steps=2"))


def test_resumed_run_keeps_the_backbone_frozen_until_the_thaw(tiny_corpus, tmp_path):
    def interrupted_after_one_epoch(out, freeze):
        trainer = Trainer(_config(tiny_corpus, out, "epochs=3", f"freeze_backbone_steps={freeze}"))
        trainer.run_epoch()
        trainer.epoch += 1
        trainer._checkpoint(out / "checkpoints" / "last.pt")
        return trainer.steps_per_epoch

    per_epoch = interrupted_after_one_epoch(tmp_path / "a", 0)
    for name, freeze, frozen in (("frozen", per_epoch + 1, True), ("thawed", 1, False)):
        interrupted_after_one_epoch(tmp_path / name, freeze)
        resumed = Trainer(
            _config(tiny_corpus, tmp_path / name, "epochs=3", f"freeze_backbone_steps={freeze}")
        )
        assert resumed.step == per_epoch and resumed.backbone_frozen is frozen
        assert all(p.requires_grad is not frozen for p in resumed.model.backbone.parameters())


def test_weight_average_follows_the_trained_weights(tiny_corpus, tmp_path):
    trainer = Trainer(
        _config(tiny_corpus, tmp_path / "run", "lr=0.003", "max_steps=6", "ema_decay=0.5")
    )
    assert trainer.scored is trainer.ema.model and trainer.scored is not trainer.model
    x, y = next(iter(trainer.loader))
    expected = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.net.train()
    for step in (1, 2, 3):
        trainer.train_step(x, y)
        d = min(0.5, (1 + step) / (10 + step))  # 0.18, 0.25, 0.31: the warm-up
        for k, v in trainer.model.state_dict().items():
            expected[k] = expected[k] * d + v * (1 - d) if v.dtype.is_floating_point else v
    average = trainer.ema.model.state_dict()
    for k in expected:
        assert torch.allclose(average[k].float(), expected[k].float(), atol=1e-6), k
    moved = [
        k
        for k, v in average.items()
        if v.dtype.is_floating_point and not torch.equal(v, trainer.model.state_dict()[k])
    ]
    assert any("running_mean" in k for k in moved) and any(k.endswith("weight") for k in moved)
    assert not any(p.requires_grad for p in trainer.ema.model.parameters())
    with pytest.raises(ValueError, match="ema_decay must be in"):
        load_config(None, ["ema_decay=1"])


def test_weight_average_is_what_is_stored_scored_and_resumed(tiny_corpus, tmp_path):
    out = tmp_path / "run"
    train(_config(tiny_corpus, out, "epochs=1", "ema_decay=0.9"))
    last = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    best = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
    # best.pt (what is exported and calibrated) holds the average; last.pt also the trained
    # weights, from which a resumed run goes on
    assert "train_state_dict" not in best
    for k, v in best["state_dict"].items():
        assert torch.equal(v, last["state_dict"][k]), k
    differ = [
        k
        for k, v in last["state_dict"].items()
        if v.dtype.is_floating_point and not torch.equal(v, last["train_state_dict"][k])
    ]
    assert differ
    resumed = Trainer(_config(tiny_corpus, out, "epochs=2", "ema_decay=0.9"))
    assert resumed.step == last["step"]
    for mine, stored in ((resumed.model, "train_state_dict"), (resumed.ema.model, "state_dict")):
        for k, v in mine.state_dict().items():
            assert torch.equal(v, last[stored][k]), (stored, k)
    # the scores calibrated and reported are the average's, not the trained weights'
    val = resumed.val_s[:6]
    averaged = resumed.scores(val)
    resumed.scored = resumed.model
    assert not np.allclose(averaged, resumed.scores(val))
    # a folder trained without the average is not resumed with one
    plain = tmp_path / "plain"
    train(_config(tiny_corpus, plain, "epochs=1"))
    with pytest.raises(ValueError, match=r"ema_decay=0\.0, not 0\.9"):
        Trainer(_config(tiny_corpus, plain, "epochs=2", "ema_decay=0.9"))


def test_run_folder_and_resume(tiny_corpus, tmp_path):
    out = tmp_path / "run"
    train(_config(tiny_corpus, out, "epochs=1"))
    files = {p.name for p in out.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "train.log", "checkpoints", "eval_test.json"} <= files
    first = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps_per_epoch = first[0]["step"]
    train(_config(tiny_corpus, out, "epochs=2"))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if "epoch" in r]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert epochs[-1]["step"] == 2 * steps_per_epoch
    assert "resumed from step" in (out / "train.log").read_text()
    final = records[-1]
    assert final["final"] and 0 < final["calibration"]["threshold"] < 1
    ckpt = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
    assert (
        ckpt["calibration"]["temperature"] > 0 and ckpt["model_spec"]["name"] == "mobilenetv3_small"
    )
    assert ckpt["data"]["sha256"]
    # Resumed once more with nothing left to train: no retraining, no second calibration.
    train(_config(tiny_corpus, out, "epochs=2"))
    assert (out / "metrics.jsonl").read_text().splitlines() == [json.dumps(r) for r in records]
    assert "nothing to do" in (out / "train.log").read_text()
    # A folder trained on other terms (a redefined hold-out group, another seed) is not
    # resumed or reused as finished: the run says which setting differs and changes nothing.
    for change, said in (
        ("exclude_families=[gan]", "exclude_families=[], not ['gan']"),
        ("exclude_sources=[elsewhere]", "exclude_sources=[], not ['elsewhere']"),
        ("seed=3", "seed=0, not 3"),
        ("max_tiles=4", "max_tiles=9, not 4"),
        ("head=hypersphere", "head='linear', not 'hypersphere'"),
        # taken from the stored optimizer on resuming: a new value was recorded, not used
        ("lr=0.5", "lr=0.001, not 0.5"),
        ("weight_decay=0.3", "weight_decay=0.05, not 0.3"),
    ):
        with pytest.raises(ValueError) as err:
            train(_config(tiny_corpus, out, "epochs=2", change))
        assert said in str(err.value) and "another out= folder" in str(err.value)
    assert (out / "metrics.jsonl").read_text().splitlines() == [json.dumps(r) for r in records]
    # neither the refused commands nor one with nothing to do rewrote the run's config.yaml
    # (it claimed target_fpr 0.2 for a threshold fitted at 0.01)
    saved = (out / "config.yaml").read_text()
    train(_config(tiny_corpus, out, "epochs=2", "target_fpr=0.2"))
    assert (out / "config.yaml").read_text() == saved and "target_fpr: 0.01" in saved


def test_a_run_folder_without_last_pt_is_not_trained_over(tmp_path):
    """best.pt and no last.pt (removed, or a soup's folder): the run started from scratch and
    wrote over the calibrated best.pt."""
    manifest = _small_manifest(tmp_path)
    out = tmp_path / "run"
    cfg = [f"data={manifest}", f"out={out}", *FAST, "batch_size=4"]
    train(load_config(None, [*cfg, "epochs=1"]))
    best = (out / "checkpoints" / "best.pt").read_bytes()
    (out / "checkpoints" / "last.pt").unlink()
    train(load_config(None, [*cfg, "epochs=1"]))  # finished: nothing to do
    assert (out / "checkpoints" / "best.pt").read_bytes() == best
    assert "nothing to do" in (out / "train.log").read_text()
    metrics = out / "metrics.jsonl"  # not finished (no final record): nothing to continue from
    metrics.write_text("\n".join(metrics.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(ValueError, match=r"best\.pt and no last\.pt to continue from"):
        train(load_config(None, [*cfg, "epochs=1"]))
    assert (out / "checkpoints" / "best.pt").read_bytes() == best


def test_a_resumed_run_on_other_data_is_refused_when_data_is_a_folder(tmp_path):
    """data= a folder holding manifest.csv: its sha256 was never taken, so a changed manifest
    resumed silently."""
    manifest = _small_manifest(tmp_path)
    out = tmp_path / "run"
    cfg = [f"data={tmp_path}", f"out={out}", *FAST, "batch_size=4"]
    train(load_config(None, [*cfg, "epochs=1"]))
    stored = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert stored["data"]["sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    text = manifest.read_text()
    manifest.write_text(text.replace(",train-real-0\n", ",another-source\n"))
    assert manifest.read_text() != text
    with pytest.raises(ValueError, match="was trained on another"):
        train(load_config(None, [*cfg, "epochs=2"]))


def test_a_folder_of_other_files_is_not_taken_over_and_a_refused_run_writes_nothing(tmp_path):
    manifest = _small_manifest(tmp_path)
    other = tmp_path / "photos"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds other files and no training run"):
        train(load_config(None, [f"data={manifest}", f"out={other}", *FAST]))
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    with pytest.raises(ValueError, match="does not exist"):
        train(load_config(None, [f"data={tmp_path / 'nope.csv'}", f"out={tmp_path / 'r'}"]))
    assert not (tmp_path / "r").exists()  # (it was left with config.yaml and checkpoints/)


def test_splits_are_known_and_a_leak_is_found_however_the_path_is_written(tmp_path):
    from training.train import split_samples

    def sample(path, label, split):
        return Sample(tmp_path / path, label, "real" if label == 0 else "g", "", "", split)

    for name in ("a", "b", "c", "d"):
        (tmp_path / f"{name}.png").write_bytes(b"x")
    base = [sample("a.png", 0, "train"), sample("b.png", 1, "train"), sample("c.png", 0, "val")]
    # a "validation" split was dropped and val taken from the training images instead
    with pytest.raises(ValueError, match=r"splits \['validation'\], not one of"):
        split_samples([*base, sample("d.png", 1, "validation")], ())
    for leak in ("sub/../b.png", str(tmp_path / "b.png")):
        (tmp_path / "sub").mkdir(exist_ok=True)
        with pytest.raises(ValueError, match="1 validation images are training images too"):
            split_samples([*base, sample("d.png", 1, "val"), sample(leak, 1, "val")], ())


def test_more_bad_settings_are_refused_before_a_run_starts():
    for override, message in [
        ("lr=[1", r"override 'lr=\[1': its value is not valid YAML"),
        ("exclude_families=[a, b", "not valid YAML"),
        ("lr=.inf", r"config\.lr must be a finite number"),
        ("grad_clip=-1", "grad_clip must be positive"),  # it turned every gradient round
        ("grad_clip=0", "grad_clip must be positive"),
        ("weight_decay=-1", "weight_decay must not be negative"),
        ("patience=0", "patience must be positive"),
        ("seed=-1", "seed and workers not negative"),
        ("max_steps=0", "max_steps must be positive"),
    ]:
        with pytest.raises(ValueError, match=message):
            load_config(None, [override])


def test_calibration_views_validation_subset_and_no_test_scoring(tiny_corpus, tmp_path):
    out = tmp_path / "run"
    config = _config(
        tiny_corpus, out, "epochs=1", "val_max_images=12", "eval_test=false",
        "calibration_views=[jpeg:90]",
    )  # fmt: skip
    trainer = Trainer(config)
    assert len(trainer._epoch_val()) == 12 < len(trainer.val_s)
    trainer.fit()
    final = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    fitted = final["calibration"]["fitted_on"]
    n_real = sum(1 for s in trainer.val_s if s.label == 0)
    assert "(as-is + jpeg:90)" in fitted and f"{2 * n_real} real" in fitted
    assert not (out / "eval_test.json").exists() and "test" not in final


@pytest.mark.slow
def test_ddp_two_processes_agree(tiny_corpus, tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",  # a free port
         str(worker), str(tmp_path), str(tiny_corpus / "manifest.csv"),
         # the first step with the backbone frozen: the ranks rewrap the model when it thaws
         "freeze_backbone_steps=1"],
        capture_output=True, text=True, timeout=600, cwd=root, env={**__import__("os").environ, "PYTHONPATH": str(root)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    digests = {(tmp_path / f"rank{r}.sha").read_text() for r in (0, 1)}
    assert len(digests) == 1


def test_balanced_sampler_shards_and_balances():
    samples = (
        [Sample(Path(f"r{i}"), 0, "real") for i in range(90)]
        + [Sample(Path(f"a{i}"), 1, "a") for i in range(9)]
        + [Sample(Path(f"b{i}"), 1, "b") for i in range(1)]
    )
    s0 = BalancedSampler(samples, 2000, seed=1, rank=0, world=2)
    s1 = BalancedSampler(samples, 2000, seed=1, rank=1, world=2)
    i0, i1 = list(s0), list(s1)
    assert len(i0) == len(i1) == 2000 and i0 != i1
    picked = np.array([samples[i].generator for i in i0 + i1])
    assert abs((picked == "real").mean() - 0.5) < 0.05
    assert abs((picked == "b").mean() - 0.25) < 0.05  # one image, a quarter of the draws
    s0.set_epoch(1)
    assert list(s0) != i0


def test_bad_configs():
    with pytest.raises(ValueError, match="unknown settings"):
        load_config(None, ["nope=1"])
    with pytest.raises(ValueError, match="not key=value"):
        load_config(None, ["epochs"])
    with pytest.raises(ValueError, match="amp"):
        load_config(None, ["amp=fp8"])
    with pytest.raises(ValueError, match="augment: unknown"):
        load_config(None, ["augment.p_sharpen=1"])
    with pytest.raises(ValueError, match=r"augment\.p_jpeg is a probability"):
        load_config(None, ["augment.p_jpeg=50"])
    with pytest.raises(ValueError, match="backbone_lr_scale must be in"):
        load_config(None, ["backbone_lr_scale=0"])
    with pytest.raises(ValueError, match="must not be negative"):
        load_config(None, ["freeze_backbone_steps=-1"])
    with pytest.raises(ValueError, match="head must be one of"):
        load_config(None, ["head=mlp"])
    with pytest.raises(ValueError, match="head_dim positive"):
        load_config(None, ["head=hypersphere", "head_dim=0"])


def test_config_values_are_checked_against_their_types():
    for override, message in [
        ("epochs=abc", "config.epochs must be a whole number"),
        ("batch_size=1.5", "config.batch_size must be a whole number"),
        ("balance=3", "config.balance must be true or false"),
        ("branches=rgb", "config.branches must be a list"),
        ("augment.jpeg_quality=[1,2,3]", "jpeg_quality must have 2 values"),
        ("augment=5", "config.augment must be a group of settings"),
    ]:
        with pytest.raises(ValueError, match=message):
            load_config(None, [override])
    # YAML 1.1 reads off/on as booleans; text settings get them back as text
    c = load_config(
        None, ["amp=off", "channels_last=on", "lr=1", "max_steps=null", "pretrained=false"]
    )
    assert (c.amp, c.channels_last, c.lr, c.max_steps) == ("off", "on", 1.0, None)
    assert c.pretrained is None
    assert isinstance(c.lr, float)
    # ... and 1e-3 (no dot) as text: a number setting takes it, not nan or inf
    assert load_config(None, ["lr=1e-3", "augment.p_jpeg=5e-1"]).lr == 0.001
    for bad in ("lr=nan", "lr=inf", "lr=1e-3x"):
        with pytest.raises(ValueError, match=r"config\.lr must be a number"):
            load_config(None, [bad])


@pytest.mark.parametrize("keep, kept_epoch", [("best", 1), ("last", 2)])
def test_the_checkpoint_kept_is_the_best_or_the_last_epoch(tiny_corpus, tmp_path, keep, kept_epoch):
    trainer = Trainer(_config(tiny_corpus, tmp_path / "run", "epochs=2", f"keep={keep}"))
    scores = iter([0.9, 0.5])  # the second epoch validates worse than the first
    trainer.validate = lambda: next(scores)
    trainer.fit()
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert best["epoch"] == kept_epoch and last["epoch"] == 2
    same = all(
        torch.equal(best["state_dict"][k], last["state_dict"][k]) for k in last["state_dict"]
    )
    assert same == (keep == "last")
    with pytest.raises(ValueError, match="keep must be best or last"):
        load_config(None, ["keep=first"])


def _small_manifest(root: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = ["path,label,split,source_id"]
    for split, n in (("train", 6), ("val", 4)):
        for label in ("real", "fake"):
            for i in range(n):
                name = f"{split}-{label}-{i}.png"
                Image.fromarray(rng.integers(0, 256, (80, 80, 3), np.uint8)).save(root / name)
                rows.append(f"{name},{label},{split},{split}-{label}-{i}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


@pytest.mark.parametrize("workers", [0, 2])
def test_an_image_that_turns_unreadable_stops_the_run_with_its_name(tmp_path, workers):
    manifest = _small_manifest(tmp_path)
    broken = sorted(tmp_path.glob("train-fake-*.png"))  # the sampler draws with replacement
    config = load_config(
        None, [f"data={manifest}", f"out={tmp_path / 'run'}", *FAST, f"workers={workers}",
               "batch_size=4", "epochs=3"],
    )  # fmt: skip
    trainer = Trainer(config)
    validate = trainer.validate

    def then_break() -> float:  # the file is damaged after the first epoch has finished
        ap = validate()
        for path in broken:
            path.write_bytes(b"\x89PNG\r\n\x1a\n cut short")
        return ap

    trainer.validate = then_break
    with pytest.raises(ImageError) as err:
        trainer.fit()
    message = str(err.value)
    assert message.startswith(f"{tmp_path}/train-fake-")
    assert ".png: corrupt or truncated PNG file" in message
    assert "run the same command again (it resumes after epoch 1, kept)" in message
    assert message.endswith("that is a new run, in another out= folder)")
    assert "Traceback" not in message
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
